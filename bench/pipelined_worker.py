"""The worker's pipelined path against building after the model: one series through
``enhance_series`` with a sink that writes each derived instance to the store (the
worker's), alternated with the same series built and written after the model; seconds
per series, with the model on all cores and on fewer (a core left free, as on a GPU node
or a host with more cores than the model's threads).

Usage: python bench/pipelined_worker.py --slices 64 --rounds 3 \
           --out bench/results/pipelined-worker-2cores.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e import source_slices  # noqa: E402
from pacs_node.enhancers import EnhancerCache  # noqa: E402
from pacs_node.pipeline import enhance_series  # noqa: E402
from pacs_node.settings import Settings  # noqa: E402
from pacs_node.storage import InstanceStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preset", default="ct-denoise-fast")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths, what = source_slices(work, args.slices)
        settings = Settings(data_dir=work / "var", device="cpu")
        enhancer = EnhancerCache(settings).get(args.preset)
        store = InstanceStore(work / "var")

        def write(ds: object) -> None:
            store.write_dataset(
                store.derived_path(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)),
                ds,  # type: ignore[attr-defined]
            )

        def serial() -> None:
            result = enhance_series(paths, args.preset, enhancer, settings.derived, set())
            for ds in result.datasets:
                write(ds)

        def pipelined() -> None:
            enhance_series(paths, args.preset, enhancer, settings.derived, set(), sink=write)

        for threads in sorted({cores, max(1, cores - 1)}, reverse=True):
            torch.set_num_threads(threads)
            serial()  # warm-up
            seconds: dict[str, list[float]] = {"serial": [], "pipelined": []}
            for _ in range(args.rounds):
                for name, run in (("serial", serial), ("pipelined", pipelined)):
                    started = time.perf_counter()
                    run()
                    seconds[name].append(time.perf_counter() - started)
            row = {"model_threads": threads, "seconds": seconds,
                   "median_s": {k: statistics.median(v) for k, v in seconds.items()}}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
        torch.set_num_threads(cores)
    report = {
        "command": "python bench/pipelined_worker.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{cores} cores, {platform.processor() or platform.machine()}",
        "series": what, "preset": args.preset, "rows": rows,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
