"""With ``scp.processes`` above 1 the DICOM port is shared (SO_REUSEPORT): the node's
receiver servers bind it too and all accept; a node never joins a port someone else
listens on, and with one process a second bind fails."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs_node.db.repository import JobRepository
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.scp.server import StorageServers, start_scp
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore
from tests.integration.peers import free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT")


def _start(
    settings: Settings, root: Path, repository: JobRepository, first: bool = True
) -> StorageServers:
    receiver = Receiver(InstanceStore(root), repository, Routing.simple("ENHANCE", "p"))
    return start_scp(settings, receiver, first=first)


def _echo(port: int) -> int:
    scanner = AE(ae_title="SCANNER")
    scanner.add_requested_context(Verification)
    association = scanner.associate("127.0.0.1", port, ae_title="ENHANCE")
    assert association.is_established
    try:
        return int(association.send_c_echo().Status)
    finally:
        association.release()


def _shared(tmp_path: Path) -> Settings:
    return Settings(ae_title="ENHANCE", port=free_port(), data_dir=tmp_path,
                    scp={"processes": 2, "maximum_associations": 40})  # fmt: skip


def test_receiver_processes_share_the_port_and_both_accept(
    tmp_path: Path, repository: JobRepository
) -> None:
    settings = _shared(tmp_path)
    first = _start(settings, tmp_path, repository)
    try:
        second = _start(settings, tmp_path, repository, first=False)
        try:
            scanner = AE(ae_title="SCANNER")
            scanner.add_requested_context(Verification)
            held = [scanner.associate("127.0.0.1", settings.port, ae_title="ENHANCE")
                    for _ in range(20)]  # fmt: skip
            try:
                assert all(a.is_established for a in held)
                servers = [first.servers[0], second.servers[0]]
                deadline = time.monotonic() + 10
                while sum(len(s.active_associations) for s in servers) < 20:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                # Spread by the kernel: all 20 on one of two would happen once in 10^6.
                assert all(len(s.active_associations) > 0 for s in servers)
            finally:
                for association in held:
                    association.release()
        finally:
            second.shutdown()
        assert _echo(settings.port) == 0  # the first still accepts alone
    finally:
        first.shutdown()


def test_a_node_does_not_join_a_port_another_process_listens_on(
    tmp_path: Path, repository: JobRepository
) -> None:
    settings = _shared(tmp_path)
    other = _start(settings, tmp_path / "other", repository)  # another node, same port
    try:
        with pytest.raises(OSError, match="in use"):
            _start(settings, tmp_path, repository)
        assert _echo(settings.port) == 0
    finally:
        other.shutdown()


def test_with_one_process_the_port_is_not_shared(tmp_path: Path, repository: JobRepository) -> None:
    settings = Settings(ae_title="ENHANCE", port=free_port(), data_dir=tmp_path)
    first = _start(settings, tmp_path, repository)
    try:
        with pytest.raises(OSError, match="in use"):
            _start(settings, tmp_path, repository)
        assert _echo(settings.port) == 0
    finally:
        first.shutdown()
