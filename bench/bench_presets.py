"""Benchmark: seconds per 512x512 slice and per volume for each preset, written as JSON.

Usage: python bench/bench_presets.py --device cpu --slices 16 --out bench/results/cpu.json
       python bench/bench_presets.py --device cuda --slices 512 --out bench/results/h100.json

Each preset runs once on a short warm-up volume, then is timed on a synthetic CT-like
volume of ``--slices`` slices (512 x 512); the time per slice is the volume time divided by
the number of slices. Presets whose weights are not installed are reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models.engine import EngineOptions
from models.noise import ct_like_noise
from models.registry import ModelRegistry, PresetError, build_enhancer, load_presets

ROOT = Path(__file__).resolve().parent.parent


def phantom(slices: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """A water cylinder with bone and soft-tissue inserts in air, plus CT-like noise (HU)."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    plane = np.full((size, size), -1000.0, dtype=np.float32)
    plane[xx**2 + yy**2 < (0.42 * size) ** 2] = 0.0
    plane[(xx - 0.15 * size) ** 2 + yy**2 < (0.05 * size) ** 2] = 700.0
    plane[(xx + 0.15 * size) ** 2 + yy**2 < (0.06 * size) ** 2] = 60.0
    volume = np.repeat(plane[None], slices, axis=0)
    return volume + ct_like_noise(volume.shape, 20.0, np.random.default_rng(seed))  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--presets", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = load_presets(ROOT / "configs" / "presets.yaml")
    registry = ModelRegistry()
    options = EngineOptions(device=args.device, batch_size=args.batch_size)
    volume = phantom(args.slices)
    warmup = phantom(min(args.slices, 4))
    results = []
    for name in args.presets or sorted(presets):
        try:
            enhancer = build_enhancer(presets[name], registry, options)
        except PresetError as exc:
            results.append({"preset": name, "skipped": str(exc)})
            continue
        enhancer(warmup, (1.0, 0.7, 0.7))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        enhancer(volume, (1.0, 0.7, 0.7))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        results.append(
            {
                "preset": name,
                "model": enhancer.info.name,
                "model_version": enhancer.info.version,
                "slices": args.slices,
                "seconds_volume": round(seconds, 3),
                "seconds_per_slice": round(seconds / args.slices, 4),
            }
        )
        print(json.dumps(results[-1]))
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "slice_size": [512, 512],
        "batch_size": args.batch_size,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
