"""Scaling: jobs per minute with 1, 2 and 4 worker processes on a queue of small series, and
the node under a backlog of many jobs (API latency, memory, order of completion).

Usage::

    python bench/scaling.py --series 20 --backlog 200 --out bench/results/scaling-cpu-2cores.json

Throughput: for each worker count, a fresh node (embedded mode, SQLite, the worker with the
prefork pool at that concurrency, preset ``--preset``) receives ``--series`` series of 8
slices of 128 x 128 one after the other, and the time from the first C-STORE to the last job
finished gives jobs per minute. Backlog: one fresh node with one worker receives
``--backlog`` series of 4 slices of 64 x 64 as fast as one association can send them; while
the worker drains them, ``GET /api/jobs`` is timed every second and the resident memory of
the node and its worker is read from /proc; at the end every job must be DONE, and the
report gives how far completion order strayed from arrival order (starvation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.load import Tally, cstore  # noqa: E402
from tests.helpers.synthetic import make_ct_series  # noqa: E402
from tests.integration.node import NodeProcess  # noqa: E402
from tests.integration.peers import CaptureSCP  # noqa: E402


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the embedded worker and its pool)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _series(count: int, slices: int, size: int, seed: int) -> list[list[Any]]:
    return [make_ct_series(None, n_slices=slices, rows=size, cols=size, seed=seed + i)
            for i in range(count)]  # fmt: skip


def _wait_all_done(node: NodeProcess, count: int, timeout_s: float) -> list[dict[str, Any]]:
    jobs = node.wait_until_finished(count, timeout_s=timeout_s)
    failed = [j for j in jobs if j["status"] != "DONE"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs not DONE: {failed[:3]}")
    return jobs


def throughput(work: Path, workers: int, count: int, preset: str) -> dict[str, Any]:
    batches = _series(count, 8, 128, seed=100 * workers)
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(work / f"node-{workers}", preset=preset, series_timeout_s="1",
                    destination=f"PACS@127.0.0.1:{pacs.port}", worker__pool="prefork",
                    worker__concurrency=str(workers)) as node,
    ):  # fmt: skip
        tally = Tally()
        started = time.perf_counter()
        for datasets in batches:
            cstore(node.port, node.ae_title, datasets, tally)
        _wait_all_done(node, count, timeout_s=1200)
        seconds = time.perf_counter() - started
    return {"workers": workers, "jobs": count, "seconds": seconds,
            "jobs_per_minute": 60.0 * count / seconds}  # fmt: skip


def backlog(work: Path, count: int, preset: str) -> dict[str, Any]:
    batches = _series(count, 4, 64, seed=9000)
    latencies: list[float] = []
    memory: dict[str, float] = {"node_max_mib": 0.0, "workers_max_mib": 0.0}
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(work / "node-backlog", preset=preset, series_timeout_s="1",
                    destination=f"PACS@127.0.0.1:{pacs.port}") as node,
    ):  # fmt: skip
        token = node.token("bench", "viewer")
        url = f"http://127.0.0.1:{node.http_port}/api/jobs?limit=100"
        stop = threading.Event()
        assert node._process is not None
        node_pid = node._process.pid

        def watch() -> None:
            while not stop.is_set():
                begun = time.perf_counter()
                answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
                if answer.status_code == 200:
                    latencies.append(time.perf_counter() - begun)
                memory["node_max_mib"] = max(memory["node_max_mib"], _rss_mib(node_pid))
                workers = sum(_rss_mib(p) for p in _tree(node_pid) if p != node_pid)
                memory["workers_max_mib"] = max(memory["workers_max_mib"], workers)
                stop.wait(1.0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        tally = Tally()
        started = time.perf_counter()
        for datasets in batches:
            cstore(node.port, node.ae_title, datasets, tally)
        sent = time.perf_counter() - started
        jobs = _wait_all_done(node, count, timeout_s=3600)
        seconds = time.perf_counter() - started
        stop.set()
        watcher.join(timeout=30)
    by_arrival = sorted(jobs, key=lambda j: j["id"])
    finished = sorted(by_arrival, key=lambda j: j["finished_at"])
    rank = {j["id"]: index for index, j in enumerate(finished)}
    strays = [abs(rank[j["id"]] - index) for index, j in enumerate(by_arrival)]
    return {
        "jobs": count, "send_seconds": sent, "drain_seconds": seconds,
        "jobs_per_minute": 60.0 * count / seconds, "sent_instances": tally.sent,
        "send_failures": tally.failures[:5],
        "api_latency_s": {"samples": len(latencies),
                          "median": statistics.median(latencies) if latencies else None,
                          "p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))]
                          if latencies else None,
                          "max": max(latencies, default=None)},
        "memory": memory,
        "completion_order": {"max_positions_out_of_arrival_order": max(strays),
                             "mean": statistics.mean(strays)},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=200)
    parser.add_argument("--preset", default="ct-denoise-fast")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results: dict[str, Any] = {"throughput": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for workers in args.workers:
            row = throughput(work, workers, args.series, args.preset)
            results["throughput"].append(row)
            print(json.dumps(row), flush=True)
        if args.backlog:
            results["backlog"] = backlog(work, args.backlog, args.preset)
            print(json.dumps(results["backlog"]), flush=True)
    report = {
        "command": "python bench/scaling.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, CPU",
        "preset": args.preset, **results,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
