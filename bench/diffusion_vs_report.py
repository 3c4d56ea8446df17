"""The diffusion candidate against every CNN of the CT report, paired per slice.

Usage::

    python bench/diffusion_vs_report.py RUN.json REPORT.csv METHOD OUT.json

RUN.json is a ``bench/diffusion_vs_cnn.py`` run and REPORT.csv the rows of
``pacs-lab evaluate-ct`` (``docs/evaluation/ct/results.csv``) on the same split, slices and
noise seed. The pairing is valid only if the noise was the same: the CNN the run measured
must agree with the report's row for every slice and level (checked, 0.001 dB). Writes,
per level, METHOD minus each model and baseline of the report with 95 % t-intervals over
slices, and which CNN was best there (OUT.json, OUT.md).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from lab.ct_eval import t_interval

METRICS = ("psnr_full_db", "psnr_soft_tissue_db")
CNNS = ("ct-denoise", "ct-denoise-fast", "ct-denoise-legacy")


def main(run_path: Path, report_path: Path, method: str, out: Path) -> None:
    """Pair ``method``'s rows of the run with the report's rows; write ``out``."""
    run = json.loads(run_path.read_text())
    cnn = run["summary"]["cnn"]
    mine = {(r["slice"], r["level_hu"]): r for r in run["rows"] if r["method"] == method}
    theirs: dict[tuple[str, float, str], dict[str, str]] = {}
    with report_path.open() as handle:
        for row in csv.DictReader(handle):
            theirs[(row["slice"], float(row["level_hu"]), row["method"])] = row
    for r in run["rows"]:  # the same noise, or the pairing means nothing
        if r["method"] == cnn:
            other = theirs[(r["slice"], r["level_hu"], cnn)]
            if abs(r["psnr_soft_tissue_db"] - float(other["psnr_soft_tissue_db"])) > 1e-3:
                raise SystemExit(f"{r['slice']} at {r['level_hu']} HU: the run's {cnn} differs "
                                 "from the report's; not the same noise")  # fmt: skip
    methods = sorted({key[2] for key in theirs})
    results: list[dict[str, Any]] = []
    for level in sorted({key[1] for key in mine}):
        for other in methods:
            entry: dict[str, Any] = {"level_hu": level, "against": other}
            for metric in METRICS:
                diffs = [mine[key][metric] - float(theirs[(key[0], level, other)][metric])
                         for key in mine if key[1] == level]  # fmt: skip
                mean, half = t_interval(diffs)
                entry[metric] = {"n": len(diffs), "mean": mean, "half_width": half}
            results.append(entry)
    lines = [f"`{method}` minus each method of the report, paired per slice (mean ± 95 % "
             "half-width, dB); the best CNN of each level in bold.", "",
             "| level | against | full window | soft tissue |", "|---|---|---|---|"]  # fmt: skip
    for level in sorted({r["level_hu"] for r in results}):
        here = [r for r in results if r["level_hu"] == level]
        best = min((r for r in here if r["against"] in CNNS),
                   key=lambda r: r["psnr_soft_tissue_db"]["mean"])  # fmt: skip
        for r in here:
            name = f"**{r['against']}**" if r is best else r["against"]
            cells = [f"{r[m]['mean']:+.2f} ± {r[m]['half_width']:.2f}" for m in METRICS]
            lines.append(f"| {level:.0f} HU | {name} | {cells[0]} | {cells[1]} |")
    out.write_text(json.dumps({"run": str(run_path), "report": str(report_path),
                               "method": method, "paired": results}, indent=1) + "\n")  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
