"""Load: 8 concurrent associations of 100 instances each and concurrent STOW-RS requests
against a real node: everything is stored, every job is DONE, the invariants hold."""

from __future__ import annotations

import shutil
import time
from functools import partial
from pathlib import Path

import pytest

from tests.helpers.load import Tally, cstore, run_all, stow
from tests.helpers.synthetic import make_ct_series
from tests.integration.node import NodeProcess
from tests.integration.peers import CaptureSCP

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
]


def test_eight_associations_and_stow_requests_at_once(tmp_path: Path) -> None:
    dimse = [make_ct_series(None, n_slices=100, rows=32, cols=32, seed=i, series_number=10 + i)
             for i in range(8)]  # fmt: skip
    web = [make_ct_series(None, n_slices=20, rows=32, cols=32, seed=50 + i, series_number=30 + i)
           for i in range(2)]  # fmt: skip
    tally = Tally()
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(tmp_path / "node", preset="identity", destination=f"PACS@127.0.0.1:{pacs.port}",
                    series_timeout_s="10") as node,
    ):  # fmt: skip
        token, url = node.token("pacs", "dicomweb-write"), f"http://127.0.0.1:{node.http_port}"
        started = time.monotonic()
        run_all(
            [partial(cstore, node.port, "ENHANCE", series, tally) for series in dimse]
            + [partial(stow, url, token, series, tally) for series in web]
        )
        stored_s = time.monotonic() - started
        assert tally.failures == [] and tally.sent == 840, tally.failures[:5]
        jobs = node.wait_until_finished(10, timeout_s=300)
        assert sorted(j["status"] for j in jobs) == ["DONE"] * 10, jobs
        assert sorted(j["instance_count"] for j in jobs) == [20, 20] + [100] * 8
        pacs.wait_for(840, timeout_s=120)
        time.sleep(2)
        assert len(pacs.datasets) == 840
        assert len({ds.SOPInstanceUID for ds in pacs.datasets}) == 840
        node.assert_invariants()
    print(f"840 instances stored in {stored_s:.1f} s")
