"""The diffusion candidate against the blind CNN at each noise level, and its sampler.

Usage::

    python bench/diffusion_vs_cnn.py OUT.json --card CARD.json [--split validation|test]
        [--cnn-preset ct-denoise] [--steps 1 10] [--samples 2]
        [--max-slices-per-collection N]

Adds the report's testing-recipe fan-beam noise (σ 20, 40, 70 HU in soft tissue, the noise
``pacs-lab evaluate-ct`` uses, same seeds) to the normal-dose slices of the split and runs
the CNN preset (as the node runs it) and the diffusion card sampled with each number of
steps. Per level: PSNR (full and soft-tissue window) with 95 % t-intervals over slices,
the paired difference diffusion − CNN with its interval (the bar: within 0.5 dB of the
best CNN), and seconds per slice. The sampler's spread, as the node's QA gate and
uncertainty map measure it: per slice, the per-pixel σ across the full sampler's output and
``--samples`` more draws with other seeds (mean and 99th percentile in soft tissue); and
for each fewer-step output its mean absolute difference from the full sampler's output.
Writes OUT.json and OUT.md (a table).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lab.ct_eval import aggregate, enhancer_method, evaluate_slices, paired_differences
from lab.ct_report import _references, subsample
from lab.data import read_manifest, select
from lab.noise import TESTING, soft_tissue_mask
from models.checkpoint import load_checkpoint
from models.engine import EngineOptions, NetworkEnhancer
from models.metrics import FULL_WINDOW, SOFT_TISSUE_WINDOW
from pacs_node.enhancers import EnhancerCache
from pacs_node.settings import Settings

LEVELS = (20.0, 40.0, 70.0)
METRICS = ("psnr_full_db", "psnr_soft_tissue_db")


def _spread(
    enhancer: NetworkEnhancer, noisy: np.ndarray, first: np.ndarray, samples: int
) -> np.ndarray:
    """Per-pixel σ of ``first`` and ``samples`` more draws of the full sampler."""
    draws = [first.astype(np.float64)]
    for draw in range(1, samples + 1):
        draws.append(enhancer.resample(noisy[None], (1.0, 1.0, 1.0), draw, 0))
    return np.std(np.stack(draws), axis=0, ddof=1)


def main() -> None:
    """Run the comparison; write OUT.json and OUT.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--card", type=Path, required=True)
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--cnn-preset", default="ct-denoise")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-slices-per-collection", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cache", type=Path, default=Path("var/cache/ct-eval"))
    args = parser.parse_args()
    torch.set_num_threads(2)

    settings = Settings()
    methods = {args.cnn_preset: enhancer_method(EnhancerCache(settings).get(args.cnn_preset))}
    enhancers: dict[str, NetworkEnhancer] = {}
    card_name = ""
    for steps in args.steps:
        network, card = load_checkpoint(args.card)
        network.sampling_steps = steps
        enhancer = NetworkEnhancer(network, card, EngineOptions(device="cpu"))
        card_name = f"{card.name}@{card.version}"
        enhancers[f"{card_name} {steps} steps"] = enhancer
        methods[f"{card_name} {steps} steps"] = enhancer_method(enhancer)
    levels = int(next(iter(enhancers.values())).card.arch_kwargs.get("steps", 0))
    if max(args.steps) != levels:
        raise SystemExit(f"--steps must include the card's {levels} levels (the full sampler)")
    full = f"{card_name} {levels} steps"
    entries = subsample(select(read_manifest(), args.split, low_dose=False),
                        args.max_slices_per_collection)  # fmt: skip
    references = _references(entries, args.data_dir)
    names = [r.name for r in references]
    started = time.perf_counter()
    rows, outputs = evaluate_slices(references, methods, LEVELS, TESTING, seed=0, keep=names,
                                    cache_dir=args.cache)  # fmt: skip
    spreads: list[dict[str, Any]] = []
    for ref in references:
        soft = soft_tissue_mask(ref.hu.astype(np.float32))
        for level in LEVELS:
            noisy = _noisy(ref, level, args.cache)  # the slice every method was given
            reference_output = outputs[(ref.name, level, full)]
            spread = _spread(enhancers[full], noisy, reference_output, args.samples)[soft]
            spreads.append({"slice": ref.name, "level_hu": level, "method": full,
                            "mean_hu": float(spread.mean()),
                            "p99_hu": float(np.percentile(spread, 99.0))})  # fmt: skip
            for name in enhancers:
                if name != full:
                    gap = np.abs(outputs[(ref.name, level, name)] - reference_output)[soft]
                    spreads.append({"slice": ref.name, "level_hu": level, "method": name,
                                    "gap_to_full_hu": float(gap.mean())})  # fmt: skip
    seconds = time.perf_counter() - started
    paired = []
    for name in methods:
        if name != args.cnn_preset:
            paired += paired_differences(rows, name, args.cnn_preset, METRICS)
    summary = {
        "card": str(args.card), "split": args.split, "cnn": args.cnn_preset,
        "levels_hu": LEVELS, "slices": len(references),
        "patients": len({e.patient for e in entries}), "samples": args.samples,
        "windows": {"full": FULL_WINDOW, "soft": SOFT_TISSUE_WINDOW},
        "noise": "lab.noise.TESTING (the evaluation's recipe), seed 0 per slice as evaluate-ct",
        "seconds": round(seconds, 1), "full_sampler": full,
    }  # fmt: skip
    result = {"summary": summary, "aggregate": aggregate(rows, METRICS),
              "paired": aggregate(paired, METRICS), "spread": spreads, "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    args.out.with_suffix(".md").write_text(_table(result, list(methods), args.cnn_preset))
    print(args.out.with_suffix(".md").read_text())


def _noisy(ref: Any, level: float, cache: Path) -> np.ndarray:
    """The noisy slice of ``ref`` at ``level``, drawn as evaluate_slices draws it."""
    from lab.ct_eval import _simulate, derived_seed, scan_field

    reference = ref.hu.astype(np.float32)
    fields = _simulate(cache, reference, ref.spacing_mm, TESTING,
                       [float(v) for v in LEVELS], derived_seed(0, ref.name), "cpu")  # fmt: skip
    drawn = fields[LEVELS.index(level)]
    return (reference + np.where(scan_field(reference), drawn, np.float32(0.0))).astype(np.float32)


def _cell(cells: list[dict[str, Any]], level: float, method: str, metric: str) -> str:
    for cell in cells:
        if (cell["level_hu"], cell["group"], cell["method"], cell["metric"]) == (
            level, "all", method, metric,
        ):  # fmt: skip
            half = cell["half_width"]
            return (
                f"{cell['mean']:+.2f} ± {half:.2f}"
                if " - " in method
                else (f"{cell['mean']:.2f} ± {half:.2f}")
            )
    return "-"


def _table(result: dict[str, Any], methods: list[str], cnn: str) -> str:
    s = result["summary"]
    lines = [
        f"Split `{s['split']}`: {s['slices']} slices of {s['patients']} patients; noise "
        f"{s['noise']}; the full sampler's spread: σ per pixel across its output and "
        f"{s['samples']} more samples, soft tissue; for fewer steps, the mean absolute "
        "difference from the full sampler's output.",
        "",
        "| level | method | PSNR full (dB) | PSNR soft (dB) | − CNN, full (dB) | − CNN, soft "
        "(dB) | s/slice | sampler spread mean / p99 (HU) |",
        "|---|---|---|---|---|---|---:|---|",
    ]
    for level in s["levels_hu"]:
        for method in methods:
            times = [r["seconds"] for r in result["rows"]
                     if r["level_hu"] == level and r["method"] == method]  # fmt: skip
            spread = [x for x in result["spread"]
                      if x["level_hu"] == level and x["method"] == method]  # fmt: skip
            spread_text = ""
            if spread and "mean_hu" in spread[0]:
                mean = np.mean([x["mean_hu"] for x in spread])
                p99 = np.mean([x["p99_hu"] for x in spread])
                spread_text = f"{mean:.2f} / {p99:.2f}"
            elif spread:
                gap = np.mean([x["gap_to_full_hu"] for x in spread])
                spread_text = f"({gap:.2f} from the full sampler)"
            diff = f"{method} - {cnn}"
            cells = [_cell(result["aggregate"], level, method, m) for m in METRICS]
            cells += [_cell(result["paired"], level, diff, m) if method != cnn else ""
                      for m in METRICS]  # fmt: skip
            lines.append(f"| {level:.0f} HU | {method} | {' | '.join(cells)} "
                         f"| {np.mean(times):.2f} | {spread_text} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
