"""A batch of instances (a STOW-RS request) stored together: one flush, one transaction
per series; a failure of the disk or of the database refuses the batch cleanly (a status
per instance, no file that no row names) and the node accepts again afterwards."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy.engine import make_url

from pacs_node import storage
from pacs_node.db.migrate import upgrade
from pacs_node.db.repository import JobRepository
from pacs_node.db.session import make_engine, make_session_factory
from pacs_node.ingest import OUT_OF_RESOURCES, Origin, Receiver
from pacs_node.routing import Routing
from pacs_node.storage import InstanceStore
from tests.helpers.synthetic import file_path, make_ct_series
from tests.helpers.tcp_proxy import TcpProxy

ORIGIN = Origin(None, None, "STOW-RS test", "STOW-RS")


def _items(folder: Path, count: int, seed: int) -> list[tuple[Dataset, bytes, str]]:
    items = []
    for ds in make_ct_series(folder, n_slices=count, rows=16, cols=16, seed=seed):
        encoded = file_path(ds).read_bytes()
        parsed = pydicom.dcmread(io.BytesIO(encoded))
        items.append((parsed, encoded, str(parsed.file_meta.TransferSyntaxUID)))
    return items


def _files(store: InstanceStore) -> list[Path]:
    return [p for p in store.received_dir.rglob("*") if p.is_file()]


@pytest.mark.skipif(storage._SYNCFS is None, reason="needs syncfs (Linux 5.8 or later)")
def test_a_batch_the_disk_refuses_leaves_no_file_and_the_next_one_is_stored(
    tmp_path: Path, repository: JobRepository
) -> None:
    store = InstanceStore(tmp_path / "data")
    receiver = Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
    items = _items(tmp_path / "a", 6, seed=1)
    blocked = store.received_path(str(items[2][0].SOPInstanceUID)).parent
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where a folder should be")  # that write fails
    results = receiver.accept_many(items, ORIGIN)
    assert [r.status for r in results] == [OUT_OF_RESOURCES] * 6
    assert all("cannot write 6 files" in (r.message or "") for r in results)
    assert _files(store) == [blocked] and repository.list_jobs() == []
    blocked.unlink()
    results = receiver.accept_many(items, ORIGIN)
    assert all(r.ok and not r.duplicate for r in results)
    [job] = repository.list_jobs()
    assert job.instance_count == 6 and len(_files(store)) == 6


def test_a_batch_while_the_database_is_down_is_refused_without_files_then_accepted(
    tmp_path: Path, postgres_url: str
) -> None:
    upgrade(postgres_url)
    direct = make_url(postgres_url)
    with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        url = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
        repository = JobRepository(make_session_factory(make_engine(url)))
        store = InstanceStore(tmp_path / "data")
        receiver = Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
        items = _items(tmp_path / "a", 10, seed=2)
        assert all(r.ok for r in receiver.accept_many(items[:4], ORIGIN))
        proxy.cut()
        results = receiver.accept_many(items[4:], ORIGIN)
        assert [r.status for r in results] == [OUT_OF_RESOURCES] * 6  # never a success
        assert len(_files(store)) == 4  # the refused instances left nothing behind
        proxy.restore()
        deadline = time.monotonic() + 20
        while not all(r.ok for r in receiver.accept_many(items[4:], ORIGIN)):
            assert time.monotonic() < deadline, "the node did not recover"
            time.sleep(0.5)
        [job] = repository.list_jobs()
        assert job.instance_count == 10 and len(_files(store)) == 10
