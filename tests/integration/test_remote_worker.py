"""A worker on another host (its own data directory, no shared disk): it fetches the inputs
by WADO-RS and uploads the derived series back, so the node serves and keeps it."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import requests

from tests.helpers.synthetic import make_ct_series
from tests.integration.node import NodeProcess, start_worker
from tests.integration.peers import CaptureSCP, storescu

pytestmark = [
    pytest.mark.integration,
    pytest.mark.production,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
]


def test_a_remote_workers_derived_series_reaches_the_node(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    sources = make_ct_series(tmp_path / "in", n_slices=4, rows=32, cols=32, series_number=5)
    study = str(sources[0].StudyInstanceUID)
    worker_dir = tmp_path / "worker-host"
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(
            tmp_path / "node", database_url=postgres_url, broker_url=redis_url,
            worker__queue=f"pacs_node_test_{uuid.uuid4().hex[:8]}", preset="identity",
            destination=f"PACS@127.0.0.1:{pacs.port}",
        ) as node,
    ):  # fmt: skip
        token = node.token("gpu-host", "worker")
        worker = start_worker(
            node, "remote", tmp_path, data_dir=str(worker_dir),
            worker__node_url=f"http://127.0.0.1:{node.http_port}", worker__node_token=token,
        )  # fmt: skip
        try:
            assert storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True).returncode == 0
            [job] = node.wait_until_finished(1, timeout_s=120)
            detail = node.job(job["id"])
            assert detail["status"] == "DONE", (detail, node.log())
            pacs.wait_for(4, timeout_s=30)
            derived = detail["output_series_instance_uid"]
            # The node holds every derived file, under its own data directory.
            paths = [Path(o["path"]) for o in detail["outputs"]]
            assert len(paths) == 4
            assert all(p.is_file() and p.is_relative_to(node.data_dir) for p in paths)
            # It fetched the inputs from the node by WADO-RS (with its token), and kept no
            # copy of them or of what it made.
            assert "fetched series" in (node.data_dir / "remote.log").read_text()
            assert not [p for p in worker_dir.rglob("*.dcm")]
            # QIDO-RS and WADO-RS of the node serve the derived series.
            base = f"http://127.0.0.1:{node.http_port}/dicom-web/studies/{study}/series/{derived}"
            auth = {"Authorization": f"Bearer {token}"}
            assert requests.get(f"{base}/instances", timeout=30).status_code == 401
            found = requests.get(f"{base}/instances", headers=auth, timeout=30)
            assert found.status_code == 200 and len(found.json()) == 4
            retrieved = requests.get(
                base, headers={"Accept": 'multipart/related; type="application/dicom"', **auth},
                timeout=30,
            )  # fmt: skip
            assert retrieved.status_code == 200
            assert retrieved.content.count(b"DICM") == 4
            node.assert_invariants()
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
