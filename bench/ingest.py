"""Ingest: the same CT series sent by dcmtk's storescu to the node and to three reference
receivers (dcmtk storescp, a bare pynetdicom SCP that only writes files, Orthanc), with 1
and 4 parallel associations, fresh receiver and fresh UIDs each round; then the same series
by STOW-RS to the node and to Orthanc's DICOMweb plugin (``--stow-per-request`` instances
per request, one request after the other); prints a table with ratios and writes JSON.

Usage: python bench/ingest.py --slices 128 --rounds 3 --out bench/results/ingest-cpu-2cores.json

Each receiver is started fresh for each round and stopped after it; the time is from the
first storescu start to the last storescu exit (every instance acknowledged), median of the
rounds. ``TCP_NODELAY=1`` is set for every process (storescu, storescp, Orthanc, the node).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pynetdicom import AE, AllStoragePresentationContexts, evt  # noqa: E402
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # noqa: E402

from pacs_node.api.multipart import build_related  # noqa: E402
from tests.helpers.postgres import postgres_database  # noqa: E402
from tests.helpers.synthetic import make_ct_series  # noqa: E402
from tests.integration.node import NodeProcess  # noqa: E402
from tests.integration.peers import OrthancPeer, free_port  # noqa: E402


@contextmanager
def storescp(work: Path) -> Iterator[int]:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    process = subprocess.Popen(["storescp", "-aet", "ENHANCE", "-od", str(out), str(port)],
                               env={**os.environ, "TCP_NODELAY": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def bare_pynetdicom(work: Path) -> Iterator[int]:
    """A pynetdicom SCP that writes each received data set to a file, nothing else."""
    out = work / "bare"
    out.mkdir()
    counter = iter(range(10**9))
    lock = threading.Lock()

    def store(event: evt.Event) -> int:
        with lock:
            n = next(counter)
        with open(out / f"{n}.dcm", "wb") as handle:
            handle.write(event.encoded_dataset())
        return 0

    ae = AE(ae_title="ENHANCE")
    ae.maximum_associations = 16
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax)
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, store)])  # fmt: skip
    try:
        yield port
    finally:
        server.shutdown()


@contextmanager
def orthanc(work: Path) -> Iterator[int]:
    with OrthancPeer("ENHANCE") as peer:
        yield peer.dicom_port


def node_variant(processes: int, database: str) -> Callable[[Path], Any]:
    """The node with ``scp.processes`` and a job database of its own (SQLite in its data
    directory, or a fresh PostgreSQL database); otherwise its defaults, but for a long
    completion timeout: only receiving is measured."""

    @contextmanager
    def variant(work: Path) -> Iterator[int]:
        settings = {"scp__processes": str(processes)}
        with contextlib.ExitStack() as stack:
            if database == "postgresql":
                settings["database_url"] = stack.enter_context(postgres_database("pacs_node_bench"))
            process = stack.enter_context(
                NodeProcess(work / "node", preset="identity", series_timeout_s="600", **settings)
            )
            process.receiver_pids(processes - 1)  # measured once every receiver listens
            yield process.port

    return variant


@contextmanager
def orthanc_stow(work: Path) -> Iterator[tuple[str, str | None]]:
    with OrthancPeer("ENHANCE", dicomweb=True) as peer:
        yield peer.dicomweb_url, None


@contextmanager
def node_stow(work: Path) -> Iterator[tuple[str, str | None]]:
    with NodeProcess(work / "node", preset="identity", series_timeout_s="600") as process:
        token = process.token("bench", "dicomweb-write")
        yield f"http://127.0.0.1:{process.http_port}/dicom-web", token


STOW_RECEIVERS = {"Orthanc": orthanc_stow, "node": node_stow}


def stow(files: list[Path], base_url: str, token: str | None, per_request: int) -> float:
    """STOW-RS of ``files`` in requests of ``per_request`` instances, one after the other."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.perf_counter()
    for first in range(0, len(files), per_request):
        parts = [(f.read_bytes(), "application/dicom") for f in files[first : first + per_request]]
        chunks, content_type = build_related(parts, "application/dicom")
        answer = requests.post(f"{base_url}/studies", data=b"".join(chunks), timeout=600,
                               headers={**headers, "Content-Type": content_type})  # fmt: skip
        if answer.status_code != 200:
            raise RuntimeError(f"STOW-RS answered {answer.status_code}: {answer.text[:300]}")
    return time.perf_counter() - started


RECEIVERS = {"dcmtk storescp": storescp, "bare pynetdicom SCP": bare_pynetdicom,
             "Orthanc": orthanc, "node": node_variant(1, "sqlite")}  # fmt: skip


def send(folders: list[Path], port: int) -> float:
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    processes = []
    for folder in folders:
        command = ["storescu", "-aec", "ENHANCE", "+sd", "+r", "127.0.0.1", str(port), str(folder)]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))  # fmt: skip
    for process in processes:
        _, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--stow-per-request",
        type=int,
        default=32,
        help="instances per STOW-RS request (0: no STOW-RS rounds)",
    )
    parser.add_argument("--receivers", nargs="+", choices=sorted(RECEIVERS), default=None,
                        help="a subset (default: all); the node is always measured")  # fmt: skip
    parser.add_argument(
        "--node-processes",
        type=int,
        nargs="+",
        default=[],
        help="also measure the node with these scp.processes (C-STORE only)",
    )
    parser.add_argument("--node-database", nargs="+", choices=["sqlite", "postgresql"],
                        default=["sqlite"],
                        help="the job databases of the node variants of --node-processes "
                        "(PostgreSQL: the test server, a fresh database each round)")  # fmt: skip
    args = parser.parse_args()
    chosen = {n: r for n, r in RECEIVERS.items() if args.receivers is None
              or n in args.receivers or n == "node"}  # fmt: skip
    for database in args.node_database:
        for processes in args.node_processes:
            if (database, processes) == ("sqlite", 1):
                continue  # the node with its defaults, measured always
            label = f"node, {database}, {processes} process{'es' if processes > 1 else ''}"
            chosen[label] = node_variant(processes, database)
    # Every process here (storescu, storescp, Orthanc, the node) inherits it: DCMTK-based
    # peers then send without Nagle's delay, as dcmtk recommends for throughput.
    os.environ["TCP_NODELAY"] = "1"
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        raise SystemExit("dcmtk is needed (make test-deps installs it)")
    times: dict[str, dict[str, list[float]]] = {r: {"1": [], "4": []} for r in chosen}
    size_mb = 0.0
    for round_ in range(args.rounds):
        for parallel in (1, 4):
            for name, receiver in chosen.items():
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp)
                    folders = [work / f"in{i}" for i in range(parallel)]
                    series = make_ct_series(work / "series", n_slices=args.slices, rows=512,
                                            cols=512, seed=1000 * round_ + parallel)  # fmt: skip
                    files = sorted((work / "series").rglob("*.dcm"))
                    assert len(files) == len(series)
                    size_mb = sum(f.stat().st_size for f in files) / 1e6
                    for index, path in enumerate(files):  # split across associations
                        folder = folders[index % parallel]
                        folder.mkdir(exist_ok=True)
                        path.rename(folder / path.name)
                    with receiver(work) as port:
                        seconds = send(folders, port)
                    times[name][str(parallel)].append(seconds)
                    print(f"round {round_ + 1} {name:22s} x{parallel}: {seconds:.2f} s", flush=True)
    for round_ in range(args.rounds if args.stow_per_request else 0):
        for name, stow_receiver in STOW_RECEIVERS.items():
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                make_ct_series(work / "series", n_slices=args.slices, rows=512, cols=512,
                               seed=7000 + round_)  # fmt: skip
                files = sorted((work / "series").rglob("*.dcm"))
                with stow_receiver(work) as (url, token):
                    seconds = stow(files, url, token, args.stow_per_request)
                times.setdefault(name, {}).setdefault("stow", []).append(seconds)
                print(f"round {round_ + 1} {name:22s} STOW-RS: {seconds:.2f} s", flush=True)
    medians = {n: {p: statistics.median(v) for p, v in t.items()} for n, t in times.items()}
    report = {
        "command": "python bench/ingest.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "series": f"{args.slices} synthetic CT slices 512 x 512, {size_mb:.0f} MB",
        "rounds": args.rounds,
        "seconds": times,
        "median_s": medians,
        "stow_instances_per_request": args.stow_per_request,
        "node_ratio": {
            ref: {
                p: medians["node"][p] / medians[ref][p]
                for p in medians[ref]
                if p in medians["node"]
            }
            for ref in medians
            if ref != "node"
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'receiver':22s} {'1 assoc':>9s} {'4 assoc':>9s} {'STOW-RS':>9s}")
    for name, value in medians.items():
        cells = [f"{value[k]:8.2f}s" if k in value else f"{'-':>9s}" for k in ("1", "4", "stow")]
        print(f"{name:22s} " + " ".join(cells))


if __name__ == "__main__":
    main()
