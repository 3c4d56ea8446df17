"""The associations the node accepts answer without Nagle's delay (TCP_NODELAY)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs_node.db.repository import JobRepository
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.scp.server import start_scp
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore
from tests.integration.peers import free_port


def _no_delay(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_accepted_associations_answer_without_nagle(
    tmp_path: Path, repository: JobRepository
) -> None:
    settings = Settings(ae_title="ENHANCE", port=free_port(), data_dir=tmp_path)
    servers = start_scp(
        settings, Receiver(InstanceStore(tmp_path), repository, Routing.simple("ENHANCE", "p"))
    )
    try:
        plain = AE(ae_title="SCANNER")
        plain.add_requested_context(Verification)
        scanner = plain.associate("127.0.0.1", settings.port, ae_title="ENHANCE")
        other = plain.associate("127.0.0.1", settings.port, ae_title="ENHANCE")
        assert scanner.is_established and other.is_established
        try:
            # The scanners' sockets keep the default; the node's side of each does not.
            assert not _no_delay(scanner.dul.socket.socket)
            deadline = time.monotonic() + 5
            while len(servers.servers[0].active_associations) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            accepted = servers.servers[0].active_associations
            assert all(_no_delay(a.dul.socket.socket) for a in accepted)
        finally:
            scanner.release()
            other.release()
    finally:
        servers.shutdown()
