"""While the job database is unreachable, C-STORE answers a failure status, never a
success, and leaves no file; once it is back, the node accepts again by itself."""

from __future__ import annotations

import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy.engine import make_url

from pacs_node.db.migrate import upgrade
from pacs_node.db.repository import JobRepository
from pacs_node.db.session import make_engine, make_session_factory
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.scp.server import start_scp
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore
from tests.helpers.synthetic import make_ct_series
from tests.helpers.tcp_proxy import TcpProxy
from tests.integration.peers import free_port


def _store(port: int, ds: object) -> tuple[int, str]:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ENHANCE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status), str(status.get("ErrorComment", ""))


def test_cstore_fails_cleanly_while_the_database_is_down_and_recovers(
    tmp_path: Path, postgres_url: str
) -> None:
    upgrade(postgres_url)
    direct = make_url(postgres_url)
    with TcpProxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
        engine = make_engine(direct.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
        repository = JobRepository(make_session_factory(engine))
        store = InstanceStore(tmp_path / "data")
        settings = Settings(ae_title="ENHANCE", port=free_port(), data_dir=tmp_path / "data")
        server = start_scp(settings, Receiver(store, repository, Routing.simple("ENHANCE", "p")))
        try:
            first, second, third = make_ct_series(None, n_slices=3, rows=32, cols=32)
            assert _store(settings.port, first) == (0, "")
            proxy.cut()
            status, comment = _store(settings.port, second)
            assert status == 0xA700, comment  # Out of Resources, never a success
            assert not store.received_path(str(second.SOPInstanceUID)).exists()
            proxy.restore()
            deadline = time.monotonic() + 20
            while _store(settings.port, second)[0] != 0:  # pooled connections re-opened
                assert time.monotonic() < deadline, "the node did not recover"
                time.sleep(0.5)
            assert _store(settings.port, third) == (0, "")
            [job] = repository.list_jobs()
            assert job.instance_count == 3
            for ds in (first, second, third):
                assert store.received_path(str(ds.SOPInstanceUID)).is_file()
        finally:
            server.shutdown()
            engine.dispose()
