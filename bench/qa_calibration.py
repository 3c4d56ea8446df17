"""Calibrate the QA gate's limits: its figures for every CT preset on real slices.

Usage::

    python bench/qa_calibration.py OUT.json [--data-dir ../shared/data] [--per-split 12]
        [--preset P ...]

The slices are the training and validation splits of ``lab/manifests/ct.json`` (never the
test split), as acquired: normal-dose slices of every vendor and kernel, and the real
low-dose ones. Each slice goes through each preset as a one-slice series, and the gate
measures it with its default limits. The JSON holds every figure; the printed table the
median and maximum per preset, and how many slices each check would fail.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.data import load_slices, read_manifest, select
from models.engine import EngineOptions
from models.registry import ModelRegistry, build_enhancer, load_presets
from pacs_node.qa import QALimits, measure
from pacs_node.settings import ModelSettings

PRESETS = ("identity", "gaussian", "anisotropic-diffusion", "ct-denoise", "ct-denoise-fast",
           "ct-denoise-legacy", "ct-sr2x", "ct-diffusion")  # fmt: skip
CHECKS = ("range_excess", "mean_shift", "residual_noise_ratio", "edge_correlation",
          "sample_spread")  # fmt: skip
SPREAD_DRAWS = 2  # the gate's default qa.diffusion_samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--per-split", type=int, default=12, help="slices per split and kind")
    parser.add_argument("--preset", nargs="+", choices=PRESETS, default=PRESETS,
                        help="a subset of the CT presets (default: all)")  # fmt: skip
    args = parser.parse_args()

    entries = read_manifest()
    chosen = []
    for split in ("train", "validation"):
        for low_dose in (False, True):
            picked = select(entries, split, low_dose=low_dose)  # type: ignore[arg-type]
            step = max(1, len(picked) // args.per_split)
            chosen += picked[::step][: args.per_split]
    slices = load_slices(chosen, args.data_dir)
    presets = load_presets(ModelSettings().presets_path)
    registry = ModelRegistry()
    limits = QALimits()
    rows = []
    for name in args.preset:
        enhancer = build_enhancer(presets[name], registry, EngineOptions(device="cpu"))
        scale = enhancer.info.scale_factor
        for ct_slice in slices:
            volume = ct_slice.hu[None].astype(np.float32)
            spacing = (1.0, ct_slice.spacing_mm, ct_slice.spacing_mm)
            started = time.perf_counter()
            output, _ = enhancer(volume, spacing, None)
            model_s = time.perf_counter() - started
            started = time.perf_counter()
            spread = None
            if getattr(enhancer, "stochastic", False):  # as the node draws: the full sampler

                def spread(e=enhancer, v=volume, s=spacing, out=output):  # type: ignore[no-untyped-def]
                    first = e.resample(v, s, 0, 0) if e.reduced_steps else out[0]
                    draws = [first] + [e.resample(v, s, d, 0) for d in range(1, SPREAD_DRAWS + 1)]
                    return np.std(np.stack(draws).astype(np.float64), axis=0, ddof=1)

            report = measure(volume, output, modality="CT", scale=scale, limits=limits,
                             sample_spread=spread)  # fmt: skip
            qa_s = time.perf_counter() - started
            rows.append({"preset": name, "member": ct_slice.entry.member,
                         "split": ct_slice.entry.split, "low_dose": ct_slice.entry.low_dose,
                         "group": ct_slice.entry.group, "model_s": model_s, "qa_s": qa_s,
                         **report.to_json()})  # fmt: skip
        print(f"{name}: {len(slices)} slices", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"limits": limits.model_dump(), "slices": len(slices),
                                       "rows": rows}, indent=1))  # fmt: skip
    print("| preset | " + " | ".join(f"{c}: median / max (fails)" for c in CHECKS) + " |")
    print("|---" * (len(CHECKS) + 1) + "|")
    for name in args.preset:
        mine = [r for r in rows if r["preset"] == name]
        cells = []
        for check in CHECKS:
            # The mean shift is judged both ways (its size); the others one way.
            size = abs if check == "mean_shift" else float
            values = [size(r["checks"][check]["value"]) for r in mine
                      if r["checks"][check]["value"] is not None]  # fmt: skip
            fails = sum(not r["checks"][check]["passed"] for r in mine)
            if values:
                cells.append(f"{np.median(values):.3g} / {max(values):.3g} ({fails})")
            else:
                cells.append(f"- ({fails})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    qa = [r["qa_s"] for r in rows]
    print(f"QA seconds per 512-slice: median {np.median(qa):.3f}, max {max(qa):.3f}")
    return 0 if all(math.isfinite(v) for v in qa) else 1


if __name__ == "__main__":
    raise SystemExit(main())
