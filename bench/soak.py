"""Soak: a real node (embedded mode) under a steady stream of series for a bounded time,
then settled and audited. Reports throughput and every broken invariant, as JSON.

Usage: python bench/soak.py --seconds 120 --out bench/results/soak-cpu-2cores.json

Each round starts ``--associations`` C-STORE associations and ``--stow`` STOW-RS requests
at once, each carrying a new series of ``--slices`` slices (64 x 64 CT, preset
``--preset``), until ``--seconds`` have passed. Then the node is given time to finish
every job, the destination (a pynetdicom Storage SCP) is counted, and `pacs-node audit`
checks the invariants. Needs dcmtk-free Python only (pynetdicom, httpx).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.load import Tally, cstore, run_all, stow  # noqa: E402
from tests.helpers.synthetic import make_ct_series  # noqa: E402
from tests.integration.node import NodeProcess  # noqa: E402
from tests.integration.peers import CaptureSCP  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--stow", type=int, default=1)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--preset", default="gaussian")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    tally = Tally()
    series = 0
    with tempfile.TemporaryDirectory() as scratch, CaptureSCP("PACS") as pacs:
        node = NodeProcess(Path(scratch) / "node", preset=args.preset, series_timeout_s="3",
                           destination=f"PACS@127.0.0.1:{pacs.port}")  # fmt: skip
        with node:
            token = node.token("soak", "dicomweb-write")
            started = time.monotonic()
            while time.monotonic() - started < args.seconds:
                batch = [
                    make_ct_series(None, n_slices=args.slices, rows=64, cols=64,
                                   seed=series + i, series_number=1 + (series + i) % 900)
                    for i in range(args.associations + args.stow)
                ]  # fmt: skip
                series += len(batch)
                url = f"http://127.0.0.1:{node.http_port}"
                run_all(
                    [partial(cstore, node.port, "ENHANCE", s, tally)
                     for s in batch[: args.associations]]
                    + [partial(stow, url, token, s, tally) for s in batch[args.associations :]]
                )  # fmt: skip
            sending_s = time.monotonic() - started
            jobs = node.wait_until_finished(series, timeout_s=1800)
            settled_s = time.monotonic() - started
            expected = series * args.slices
            pacs.wait_for(expected, timeout_s=300)
            time.sleep(2)
            audit = node.cli("audit", "--json", check=False)
            findings = json.loads(audit.stdout or "[]")
            statuses: dict[str, int] = {}
            for job in jobs:
                statuses[job["status"]] = statuses.get(job["status"], 0) + 1
            report = {
                "command": "python " + " ".join(sys.argv),
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "host": platform.node(),
                "settings": vars(args) | {"out": str(args.out)},
                "series": series,
                "instances_sent": tally.sent,
                "send_failures": tally.failures[:20],
                "seconds_sending": round(sending_s, 1),
                "seconds_until_settled": round(settled_s, 1),
                "instances_per_second_received": round(tally.sent / sending_s, 1),
                "instances_per_second_end_to_end": round(tally.sent / settled_s, 1),
                "jobs": statuses,
                "derived_at_destination": len(pacs.datasets),
                "distinct_derived_at_destination": len({d.SOPInstanceUID for d in pacs.datasets}),
                "expected_derived": expected,
                "invariant_findings": findings,
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "send_failures"}, indent=2))


if __name__ == "__main__":
    main()
