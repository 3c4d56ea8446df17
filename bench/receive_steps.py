"""The receive path's steps, timed one by one in this process: what one C-STORE of a
512 x 512 CT instance costs the node's handler beyond pynetdicom, step by step, and the
door's decoding check on real CT headers.

Usage: python bench/receive_steps.py --instances 300 \\
           --out bench/results/receive-steps-cpu-2cores.json

Steps (each instance a fresh SOP Instance UID, one series, SQLite as the node's default,
``synchronous=FULL``; the first 20 instances are warm-up):

- ``read``: parsing the received bytes into a dataset (what ``event.dataset`` does);
- ``decoding check``: :func:`pacs_node.ingest.decoding_problem`;
- ``input checks``: :func:`pacs_node.ingest.check_dataset` (identifiers, pixel data);
- ``duplicate lookup``: :meth:`JobRepository.find_instances`;
- ``durable write``: :meth:`InstanceStore.write_atomic` (temporary file, fsync, rename,
  fsync of the folder);
- ``row``: :meth:`JobRepository.record_instance` (the job's count and the instance row,
  one transaction, committed);
- ``accept``: all of it as the node runs it (:meth:`Receiver.accept`, read excluded).

Real headers: the decoding check against ``Dataset.walk`` (what it replaced), each file
read afresh: every slice of ``../shared/data/ct_tcga_slices.tar.xz`` once (48 patients,
19 scanner models: first instances of their series), then the pancreas series of
``ct_pancreas_tcia.tar.xz`` slice after slice.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom import dcmread  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from pacs_node import ingest  # noqa: E402
from pacs_node.db.migrate import upgrade  # noqa: E402
from pacs_node.db.repository import JobRepository  # noqa: E402
from pacs_node.db.session import make_engine, make_session_factory  # noqa: E402
from pacs_node.ingest import (  # noqa: E402
    Origin,
    Receiver,
    _received,
    check_dataset,
    decoding_problem,
)
from pacs_node.routing import Routing  # noqa: E402
from pacs_node.storage import InstanceStore  # noqa: E402
from tests.helpers.synthetic import make_ct_series  # noqa: E402

TCGA = ROOT.parent / "shared" / "data" / "ct_tcga_slices.tar.xz"
PANCREAS = ROOT.parent / "shared" / "data" / "ct_pancreas_tcia.tar.xz"
WARM_UP = 20


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def steps(instances: int, work: Path) -> dict[str, float]:
    """Median milliseconds of each step over ``instances`` synthetic instances."""
    [template] = make_ct_series(None, n_slices=1, rows=512, cols=512)
    url = f"sqlite:///{work / 'jobs.sqlite'}"
    upgrade(url)
    receiver = Receiver(InstanceStore(work / "data"),
                        JobRepository(make_session_factory(make_engine(url))),
                        Routing.simple("ENHANCE", "identity"))  # fmt: skip
    origin = Origin("BENCH", "ENHANCE", "BENCH (C-STORE)")
    times: dict[str, list[float]] = {}

    @contextmanager
    def clock(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        times.setdefault(name, []).append((time.perf_counter() - started) * 1e3)

    def fresh() -> bytes:
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        return _encoded(template)

    for _ in range(instances):
        data = fresh()
        with clock("read"):
            ds = dcmread(io.BytesIO(data))
        syntax = str(ds.file_meta.TransferSyntaxUID)
        with clock("decoding check"):
            decoding_problem(ds)
        with clock("input checks"):
            check_dataset(ds, syntax)
        uid = str(ds.SOPInstanceUID)
        with clock("duplicate lookup"):
            receiver.repository.find_instances([uid])
        path = receiver.store.received_path(uid)
        with clock("durable write"):
            receiver.store.write_atomic(path, data)
        with clock("row"):
            row = _received(ds, uid, path, len(data), syntax, origin)
            receiver.repository.record_instance(row, partial(receiver.route, ds, origin))
        data = fresh()
        ds = dcmread(io.BytesIO(data))
        with clock("accept"):
            receiver.accept(ds, data, syntax, origin)
    return {name: round(statistics.median(values[WARM_UP:]), 3) for name, values in times.items()}


def _members(archive_path: Path) -> list[bytes]:
    with tarfile.open(archive_path) as archive:
        return [archive.extractfile(m).read()  # type: ignore[union-attr]
                for m in sorted(archive.getmembers(), key=lambda m: m.name)
                if m.name.endswith(".dcm")]  # fmt: skip


def real_headers() -> dict[str, object]:
    """The decoding check and ``Dataset.walk`` on real files, median milliseconds: each
    TCGA slice once (48 patients: the first instance of a series, nothing of it seen
    before but what other scanners share), then the pancreas series slice after slice
    (the rest of a series). The check's memory of decoded elements starts empty."""

    def walk(ds: Dataset) -> None:
        ds.walk(lambda _ds, _elem: None)

    if hasattr(ingest, "_DECODED"):  # absent from code before 2026-12-01
        ingest._DECODED.clear()
    report: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some real headers carry values pydicom warns about
        for name, archive in (
            ("first instances (TCGA)", TCGA),
            ("one series (pancreas)", PANCREAS),
        ):
            files = _members(archive)
            times: dict[str, list[float]] = {"decoding check": [], "Dataset.walk": []}
            for data in files:
                for method, check in (("decoding check", decoding_problem), ("Dataset.walk", walk)):
                    ds = dcmread(io.BytesIO(data))
                    started = time.perf_counter()
                    check(ds)
                    times[method].append((time.perf_counter() - started) * 1e3)
            elements = [sum(1 for _ in dcmread(io.BytesIO(data)).iterall()) for data in files]
            report[name] = {
                "slices": len(files),
                "elements_median": statistics.median(elements),
                "median_ms": {m: round(statistics.median(v), 3) for m, v in times.items()},
            }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=ROOT.parent) as tmp:
        synthetic = steps(args.instances, Path(tmp))
    for name, value in synthetic.items():
        print(f"{name:20s} {value:6.3f} ms")
    real = real_headers() if TCGA.is_file() and PANCREAS.is_file() else None
    for name, row in (real or {}).items():
        print(f"real headers, {name}: {row}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    report = {
        "benchmark": "the receive path's steps in-process (bench/receive_steps.py)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "command": " ".join(["python", "bench/receive_steps.py", *sys.argv[1:]]),
        "synthetic_512x512_median_ms": synthetic,
        "real_headers": real,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
