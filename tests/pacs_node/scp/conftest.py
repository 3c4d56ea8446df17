"""The Storage SCP started in-process on a free port, over a real job database."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pacs_node.admission import DiskGuard
from pacs_node.db.repository import JobRepository
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.scp.server import start_scp
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore
from tests.integration.peers import free_port


@dataclass
class Node:
    port: int
    store: InstanceStore
    repository: JobRepository
    disk: DiskGuard


@pytest.fixture()
def node(tmp_path: Path, repository: JobRepository) -> Iterator[Node]:
    settings = Settings(ae_title="ENHANCE", port=free_port(), data_dir=tmp_path)
    store = InstanceStore(tmp_path)
    disk = DiskGuard(tmp_path, max_used_percent=100.0, min_free_gib=0.0)  # never full
    context = Receiver(store, repository, Routing.simple("ENHANCE", "ct-denoise"), disk=disk)
    server = start_scp(settings, context)
    yield Node(settings.port, store, repository, disk)
    server.shutdown()
