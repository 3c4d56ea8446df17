"""Where the node's receive path spends its time: py-spy samples `pacs-node serve` while
storescu sends a series, and the samples are summed per function (own time, and time
including callees) into JSON.

Usage: python bench/profile_ingest.py --slices 256 \
           --out bench/results/profile-ingest-cpu-2cores.json

Needs py-spy (``pip install py-spy``; it reads the process from outside, so the node runs
unchanged) and dcmtk.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.synthetic import make_ct_series  # noqa: E402
from tests.integration.node import NodeProcess  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_ct_series(work / "series", n_slices=args.slices, rows=512, cols=512)
        with NodeProcess(work / "node", preset="identity", series_timeout_s="600") as node:
            assert node._process is not None
            raw = work / "samples.txt"
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                 str(node._process.pid), "--format", "raw", "--rate", "200", "--output",
                 str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)
            started = time.perf_counter()
            subprocess.run(["storescu", "-aec", "ENHANCE", "+sd", "+r", "127.0.0.1",
                            str(node.port), str(work / "series")], check=True,
                           capture_output=True)  # fmt: skip
            seconds = time.perf_counter() - started
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            spy.wait(timeout=60)
        own: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        samples = 0
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            # "function (file:line)" -> "function (file)": one entry per function.
            frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
            if not any("handle_store" in f or "ingest.py" in f for f in frames):
                continue  # only the receiving threads
            count = int(count_text)
            samples += count
            own[frames[-1]] += count
            for frame in set(frames):
                total[frame] += count
    report = {
        "command": "python bench/profile_ingest.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "series": f"{args.slices} synthetic CT slices 512 x 512",
        "send_seconds": round(seconds, 2),
        "receive_samples": samples,
        "own_time_share": {k: round(v / samples, 3) for k, v in own.most_common(args.top)},
        "inclusive_share": {k: round(v / samples, 3) for k, v in total.most_common(args.top)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("inclusive:")
    for name, share in report["inclusive_share"].items():
        print(f"{share:6.1%}  {name}")
    print("own:")
    for name, share in report["own_time_share"].items():
        print(f"{share:6.1%}  {name}")


if __name__ == "__main__":
    main()
