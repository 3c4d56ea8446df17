"""Association limits of the Storage SCP, configured and checked with a real SCU: at most
``scp.maximum_associations`` at once, the PDU size it announces, and the idle timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacs_node.db.repository import JobRepository
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.scp.server import start_scp
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore
from tests.helpers.synthetic import make_ct_series
from tests.integration.peers import free_port


@pytest.fixture()
def scp(tmp_path: Path, repository: JobRepository) -> Iterator[tuple[int, InstanceStore]]:
    settings = Settings(
        ae_title="ENHANCE", port=free_port(), data_dir=tmp_path,
        scp={"maximum_associations": 2, "max_pdu_bytes": 16384, "network_timeout_s": 1.0},
    )  # fmt: skip
    store = InstanceStore(tmp_path)
    server: ThreadedAssociationServer = start_scp(
        settings, Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
    )
    yield settings.port, store
    server.shutdown()


def _associate(port: int) -> object:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.maximum_pdu_size = 0  # the requestor takes any PDU size: the SCP's limit rules
    return ae.associate("127.0.0.1", port, ae_title="ENHANCE")


def test_associations_beyond_the_maximum_are_rejected_then_accepted_again(
    scp: tuple[int, InstanceStore],
) -> None:
    port, _ = scp
    first, second = _associate(port), _associate(port)
    assert first.is_established and second.is_established  # type: ignore[attr-defined]
    third = _associate(port)
    assert third.is_rejected  # type: ignore[attr-defined]
    first.release()  # type: ignore[attr-defined]
    time.sleep(0.3)
    fourth = _associate(port)
    assert fourth.is_established  # type: ignore[attr-defined]
    fourth.release()  # type: ignore[attr-defined]
    second.release()  # type: ignore[attr-defined]


def test_the_scp_announces_its_pdu_limit_and_large_instances_still_arrive(
    scp: tuple[int, InstanceStore],
) -> None:
    port, store = scp
    assoc = _associate(port)
    assert assoc.is_established  # type: ignore[attr-defined]
    assert assoc.acceptor.maximum_length == 16384  # type: ignore[attr-defined]
    [ds] = make_ct_series(None, n_slices=1, rows=256, cols=256)  # 128 KiB: eight PDUs or more
    assert int(assoc.send_c_store(ds).Status) == 0  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert store.received_path(str(ds.SOPInstanceUID)).is_file()


def test_an_idle_association_is_closed_by_the_scp(scp: tuple[int, InstanceStore]) -> None:
    port, _ = scp
    assoc = _associate(port)
    assert assoc.is_established  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
    assert not assoc.is_established  # type: ignore[attr-defined]
    assert assoc.is_aborted or assoc.is_released  # type: ignore[attr-defined]
    assert time.monotonic() < deadline  # within the 1 s network timeout, plus slack
