"""BatchNorm folded into the convolutions before it, against the same network unfolded:
seconds per 512 x 512 slice on the CPU, runs alternated so drift hits both alike, and
the largest output difference (HU).

Usage: python bench/batch_norm_folding.py --slices 16 --rounds 6 \
           --out bench/results/batch-norm-folding-2cores.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cpu_options import _volume  # noqa: E402
from models.engine import EngineOptions, NetworkEnhancer  # noqa: E402
from models.registry import ModelRegistry, load_presets  # noqa: E402
from pacs_node.settings import ModelSettings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--presets", nargs="+", default=["ct-denoise", "ct-denoise-fast"])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    volume, spacing = _volume(args.slices)
    presets = load_presets(ModelSettings().presets_path)
    registry = ModelRegistry()
    results = []
    for name in args.presets:
        model = presets[name].model
        assert model is not None, f"{name} has no network"
        network, card = registry.load(model, device="cpu")
        engines = {
            folded: NetworkEnhancer(network, card, EngineOptions(device="cpu",
                                                                 fold_batch_norm=folded))
            for folded in (True, False)
        }  # fmt: skip
        outputs = {folded: engine(volume, spacing)[0] for folded, engine in engines.items()}
        seconds: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for folded, engine in engines.items():
                started = time.perf_counter()
                engine(volume, spacing)
                seconds[folded].append((time.perf_counter() - started) / args.slices)
        difference = np.abs(outputs[True].astype(np.float64) - outputs[False])
        row = {
            "preset": name, "model": model,
            "folded_s_per_slice": statistics.median(seconds[True]),
            "unfolded_s_per_slice": statistics.median(seconds[False]),
            "folded_runs": seconds[True], "unfolded_runs": seconds[False],
            "faster_in_rounds": sum(a < b for a, b in zip(seconds[True], seconds[False],
                                                           strict=True)),
            "max_abs_diff_hu": float(difference.max()),
            "mean_abs_diff_hu": float(difference.mean()),
        }  # fmt: skip
        results.append(row)
        print(
            f"{name}: folded {row['folded_s_per_slice']:.3f} s/slice, unfolded "
            f"{row['unfolded_s_per_slice']:.3f}, faster in {row['faster_in_rounds']} of "
            f"{args.rounds} rounds, max |diff| {row['max_abs_diff_hu']:.4f} HU",
            flush=True,
        )
    report = {
        "command": "python bench/batch_norm_folding.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
        "torch": torch.__version__, "slices": args.slices, "rounds": args.rounds,
        "rows": results,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
