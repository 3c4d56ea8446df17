"""Fault injection against real processes (PostgreSQL, Redis, separately started Celery
workers): the node resumes by itself and processes each series once."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from tests.helpers.synthetic import make_ct_series
from tests.integration.node import NodeProcess, start_worker, wait_for_status
from tests.integration.peers import CaptureSCP, storescu

pytestmark = [
    pytest.mark.integration,
    pytest.mark.production,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
]


def _slow_presets(tmp_path: Path) -> str:
    """A presets file whose one preset is slow enough on a CPU to be caught while it runs:
    the diffusion model with every one of its 10 sampling steps named (whatever the shipped
    preset samples), the QA gate drawing its samples as well."""
    path = tmp_path / "presets.yaml"
    path.write_text(
        "slow-diffusion:\n"
        "  description: the diffusion sampler with all its steps\n"
        "  modality: CT\n"
        "  model: ct-diffusion-cold\n"
        "  parameters: {steps: 10}\n"
    )
    return str(path)


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes_once(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    queue = f"pacs_node_test_{uuid.uuid4().hex[:8]}"
    # 48 slices through the slow preset: several seconds of work to be caught running.
    make_ct_series(tmp_path / "in", n_slices=48, rows=192, cols=192, series_number=7)
    workers: list[subprocess.Popen[bytes]] = []
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(
            tmp_path / "node", database_url=postgres_url, broker_url=redis_url,
            worker__queue=queue, worker__lease_s="5", preset="slow-diffusion",
            models__presets_file=_slow_presets(tmp_path),
            destination=f"PACS@127.0.0.1:{pacs.port}",
        ) as node,
    ):  # fmt: skip
        try:
            assert storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True).returncode == 0
            wait_for_status(node, "QUEUED", 1)
            first = start_worker(node, "doomed", tmp_path)
            workers.append(first)
            wait_for_status(node, "RUNNING", 1, timeout_s=120)
            first.send_signal(signal.SIGKILL)  # no warm shutdown, no lease released
            first.wait(timeout=10)
            workers.append(start_worker(node, "rescuer", tmp_path))
            [job] = node.wait_until_finished(1, timeout_s=240)
            detail = node.job(job["id"])
            assert detail["status"] == "DONE", detail
            assert detail["attempts"] == 2
            running = [e["message"] for e in detail["events"]
                       if e["message"].startswith("attempt ")]  # fmt: skip
            assert len(running) == 2 and running[0].split()[-1] != running[1].split()[-1]
            lost = [e["message"] for e in detail["events"] if e["actor"] == "reconciler"]
            assert any("stopped renewing its lease" in m for m in lost), detail["events"]
            # The destination holds the one derived series, each instance once.
            derived = pacs.wait_for(48, timeout_s=60)
            time.sleep(2)  # anything sent twice would arrive now
            assert len(pacs.datasets) == 48
            assert {ds.SeriesInstanceUID for ds in derived} == {
                detail["output_series_instance_uid"]
            }
            assert len({ds.SOPInstanceUID for ds in pacs.datasets}) == 48
            node.assert_invariants()
        finally:
            _stop(workers)
            redis.Redis.from_url(redis_url).delete(queue)


def test_a_job_whose_broker_message_was_lost_still_runs_once(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    queue = f"pacs_node_test_{uuid.uuid4().hex[:8]}"
    make_ct_series(tmp_path / "in", n_slices=4, rows=64, cols=64, series_number=8)
    workers: list[subprocess.Popen[bytes]] = []
    broker = redis.Redis.from_url(redis_url)
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(
            tmp_path / "node", database_url=postgres_url, broker_url=redis_url,
            worker__queue=queue, worker__requeue_after_s="4", preset="gaussian",
            destination=f"PACS@127.0.0.1:{pacs.port}",
        ) as node,
    ):  # fmt: skip
        try:
            assert storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True).returncode == 0
            wait_for_status(node, "QUEUED", 1)
            deadline = time.monotonic() + 30
            while broker.llen(queue) == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert broker.llen(queue) == 1
            broker.delete(queue)  # the broker restarts without its data
            workers.append(start_worker(node, "late", tmp_path))
            [job] = node.wait_until_finished(1, timeout_s=120)
            detail = node.job(job["id"])
            assert detail["status"] == "DONE" and detail["attempts"] == 1, detail
            assert any("published again" in e["message"] for e in detail["events"])
            pacs.wait_for(4, timeout_s=30)
            time.sleep(2)
            assert len(pacs.datasets) == 4
            node.assert_invariants()
        finally:
            _stop(workers)
            broker.delete(queue)


def test_a_job_past_its_time_limit_fails_with_the_reason_and_the_node_goes_on(
    tmp_path: Path,
) -> None:
    make_ct_series(tmp_path / "slow", n_slices=8, rows=192, cols=192, series_number=3)
    make_ct_series(tmp_path / "next", n_slices=2, rows=32, cols=32, series_number=4)
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(
            tmp_path / "node", preset="slow-diffusion",
            models__presets_file=_slow_presets(tmp_path), worker__time_limit_base_s="1",
            worker__time_limit_per_slice_s="0", destination=f"PACS@127.0.0.1:{pacs.port}",
        ) as node,
    ):  # fmt: skip
        assert storescu(tmp_path / "slow", node.port, "ENHANCE", scan_dir=True).returncode == 0
        [job] = node.wait_until_finished(1, timeout_s=120)
        detail = node.job(job["id"])
        assert detail["status"] == "FAILED" and detail["error_code"] == "time_limit", detail
        assert "exceeded its time limit of 1 s" in detail["error_message"]
        assert pacs.datasets == []  # nothing half-done was sent
        # The worker lives on: the next series is taken (and fails on time as well, the
        # limit being 1 s, which shows the worker still runs jobs).
        assert storescu(tmp_path / "next", node.port, "ENHANCE", scan_dir=True).returncode == 0
        jobs = node.wait_until_finished(2, timeout_s=120)
        assert len(jobs) == 2
        node.assert_invariants()


def test_serve_killed_mid_series_then_restarted_completes_the_series_once(
    tmp_path: Path,
) -> None:
    sources = make_ct_series(tmp_path / "in", n_slices=10, rows=64, cols=64, series_number=5)
    first_half, second_half = tmp_path / "a", tmp_path / "b"
    for folder, part in ((first_half, sources[:5]), (second_half, sources[5:])):
        folder.mkdir()
        for ds in part:
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    with CaptureSCP("PACS") as pacs:
        # The rest of the series comes within the quiet period (the node cannot know more
        # is coming after it), so it is the same series: one job.
        node = NodeProcess(tmp_path / "node", preset="gaussian", series_timeout_s="20",
                           destination=f"PACS@127.0.0.1:{pacs.port}")  # fmt: skip
        node.start()
        try:
            assert storescu(first_half, node.port, "ENHANCE", scan_dir=True).returncode == 0
            assert node._process is not None
            node._process.send_signal(signal.SIGKILL)  # mid-series, no shutdown at all
            node._process.wait(timeout=10)
            (node.data_dir / "node.ready").unlink(missing_ok=True)
            node.start()  # same data directory and ports
            assert storescu(second_half, node.port, "ENHANCE", scan_dir=True).returncode == 0
            [job] = node.wait_until_finished(1, timeout_s=120)
            detail = node.job(job["id"])
            assert detail["status"] == "DONE" and detail["instance_count"] == 10, detail
            derived = pacs.wait_for(10, timeout_s=30)
            time.sleep(2)
            assert len(pacs.datasets) == 10  # one derived series, each instance once
            assert {ds.SeriesInstanceUID for ds in derived} == {
                detail["output_series_instance_uid"]
            }
            node.assert_invariants()
        finally:
            node.stop()
