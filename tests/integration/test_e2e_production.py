"""End to end, production mode: PostgreSQL job database, Redis broker, the SCP started
alone and two Celery workers started separately (`celery -A workers.app worker`)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pydicom
import pytest
import redis
from pydicom.filebase import DicomBytesIO

from tests.helpers.synthetic import make_ct_series
from tests.integration.checks import assert_derived_series
from tests.integration.node import NodeProcess, start_worker, wait_for_status
from tests.integration.peers import OrthancPeer, orthanc_binary, storescu

pytestmark = [
    pytest.mark.integration,
    pytest.mark.production,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed"),
]


def test_separate_workers_on_redis_and_postgresql(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    queue = f"pacs_node_test_{uuid.uuid4().hex[:8]}"
    first = make_ct_series(tmp_path / "a", n_slices=8, rows=96, cols=96, series_number=4)
    second = make_ct_series(tmp_path / "b", n_slices=5, rows=96, cols=96, series_number=5)
    workers: list[subprocess.Popen[bytes]] = []
    with (
        OrthancPeer("PACS") as orthanc,
        NodeProcess(
            tmp_path / "node",
            database_url=postgres_url,
            broker_url=redis_url,
            worker__queue=queue,
            destination=f"PACS@127.0.0.1:{orthanc.dicom_port}",
        ) as node,
    ):
        try:
            assert not (node.data_dir / "worker.log").exists(), "no embedded worker expected"
            for folder in ("a", "b"):
                assert (
                    storescu(tmp_path / folder, node.port, "ENHANCE", scan_dir=True).returncode == 0
                )
            # Without workers the jobs wait, durably, in the queue.
            wait_for_status(node, "QUEUED", 2)
            workers = [start_worker(node, f"w{i}", tmp_path) for i in (1, 2)]
            jobs = node.wait_until_finished(2, timeout_s=120)
            assert sorted(j["status"] for j in jobs) == ["DONE", "DONE"], node.log()
            derived = {}
            for job in jobs:
                detail = node.job(job["id"])
                running = [e for e in detail["events"] if e["status"] == "RUNNING"]
                assert running and running[0]["message"].startswith("attempt 1 on ")
                instances = orthanc.wait_for_instances(
                    detail["output_series_instance_uid"], detail["instance_count"]
                )
                derived[job["series_number"]] = [
                    pydicom.dcmread(DicomBytesIO(orthanc.instance_file(i["ID"]))) for i in instances
                ]
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
            redis.Redis.from_url(redis_url).delete(queue)
    assert_derived_series(derived[4], first, preset="ct-denoise", work_dir=tmp_path)
    assert_derived_series(derived[5], second, preset="ct-denoise", work_dir=tmp_path)
