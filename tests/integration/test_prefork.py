"""A worker with Celery's prefork pool runs network presets: its pool children do not hang
in PyTorch's thread pool (the parent checks the preset in a spawned process)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.load import Tally, cstore
from tests.helpers.synthetic import make_ct_series
from tests.integration.node import NodeProcess
from tests.integration.peers import CaptureSCP


def test_a_prefork_pool_runs_network_jobs(tmp_path: Path) -> None:
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(tmp_path / "node", preset="ct-denoise-fast", series_timeout_s="1",
                    destination=f"PACS@127.0.0.1:{pacs.port}", worker__pool="prefork",
                    worker__concurrency="2") as node,
    ):  # fmt: skip
        tally = Tally()
        for seed in (1, 2):
            cstore(node.port, node.ae_title, make_ct_series(None, n_slices=3, seed=seed), tally)
        assert tally.failures == [] and tally.sent == 6
        jobs = node.wait_until_finished(2, timeout_s=180)
        assert [j["status"] for j in jobs] == ["DONE", "DONE"], jobs
        pacs.wait_for(6, timeout_s=30)
