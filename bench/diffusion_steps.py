"""What the sampler's steps do: a diffusion preset scored at several step counts (validation).

Usage: python bench/diffusion_steps.py --steps 10 1 --no-noise 10
           --out bench/results/diffusion-steps/validation-0.3.0.json

Scores the preset's network on the validation split of the evaluation (the validation
phantoms and the held-out real CT slices between the test slices; never the test images),
each case with one simulated quarter-dose draw, as ``pacs-lab evaluate --split
validation`` makes them. For each step count the sampler runs from the low-dose image with
the card's seed; ``--no-noise`` step counts run with the sampler's noise set to zero. The
CNN preset (``--cnn``, default ct-denoise) is scored on the same cases for reference. The
mean PSNR per dataset at both windows is written as JSON and printed. To score other
weights, point ``PACS_NODE_MODELS__WEIGHTS_DIR`` at their folder (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch

from lab.evaluation import EvaluationConfig, phantom_cases, real_ct_cases
from models.engine import NetworkEnhancer
from models.metrics import FULL_WINDOW, SOFT_TISSUE_WINDOW, psnr
from models.networks.diffusion import ColdDiffusion
from pacs_node.enhancers import EnhancerCache
from pacs_node.settings import Settings

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ct_pancreas_tcia.tar.xz"


def score(run: Callable[[np.ndarray], np.ndarray], cases: list) -> dict[str, dict[str, float]]:
    """Mean PSNR per dataset at the full and soft-tissue windows, and seconds per slice."""
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for case in cases:
        started = time.perf_counter()
        output = run(case.noisy)
        seconds = time.perf_counter() - started
        truth = case.reference[case.centre]
        rows.setdefault(case.dataset, []).append(
            (psnr(output, truth, FULL_WINDOW), psnr(output, truth, SOFT_TISSUE_WINDOW), seconds)
        )
    return {
        dataset: {
            "images": len(values),
            "psnr_full_db": round(float(np.mean([v[0] for v in values])), 3),
            "psnr_soft_tissue_db": round(float(np.mean([v[1] for v in values])), 3),
            "seconds_per_slice": round(float(np.mean([v[2] for v in values])), 2),
        }
        for dataset, values in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="ct-diffusion")
    parser.add_argument("--cnn", default="ct-denoise")
    parser.add_argument("--steps", type=int, nargs="*", default=[10, 1])
    parser.add_argument("--no-noise", type=int, nargs="*", default=[])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = EvaluationConfig(split="validation", bias_draws=1)
    cases = phantom_cases(config) + real_ct_cases(args.data, config)
    settings = Settings()
    cache = EnhancerCache(settings)
    enhancer = cache.get(args.preset)
    if not isinstance(enhancer, NetworkEnhancer) or not isinstance(enhancer.network, ColdDiffusion):
        raise SystemExit(f"{args.preset} does not run a cold diffusion network")
    network = enhancer.network
    cnn = cache.get(args.cnn)
    results: list[dict[str, object]] = [
        {"method": args.cnn, "scores": score(lambda v: cnn(v, (1.0, 1.0, 1.0))[0][1], cases)}
    ]
    trained_noise = network.noise_scale
    runs = [(k, trained_noise) for k in args.steps] + [(k, 0.0) for k in args.no_noise]
    try:
        for steps, noise in runs:
            network.noise_scale = noise
            # The engine calls the network, whose forward samples with its own step count;
            # `sample(x, steps=k)` runs a coarser grid of the same trained levels.
            network.forward = partial(ColdDiffusion.sample, network, steps=steps)  # type: ignore[method-assign]
            scores = score(lambda v: enhancer(v, (1.0, 1.0, 1.0))[0][1], cases)
            results.append(
                {"method": args.preset, "steps": steps, "noise_scale": noise, "scores": scores}
            )
            print(results[-1], flush=True)
    finally:
        network.noise_scale = trained_noise
        del network.forward
    card = enhancer.card
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/diffusion_steps.py "
        + " ".join(
            [f"--preset {args.preset}", f"--cnn {args.cnn}", "--steps", *map(str, args.steps)]
            + (["--no-noise", *map(str, args.no_noise)] if args.no_noise else [])
        ),
        "model": {"name": card.name, "version": card.version, "sha256": card.weights_sha256},
        # Searched before models/weights (PACS_NODE_MODELS__WEIGHTS_DIR), None if unset.
        "weights_dir": str(settings.models.weights_dir) if settings.models.weights_dir else None,
        "split": "validation",
        "host": {
            "machine": platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
