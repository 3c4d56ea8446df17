"""MR denoising on the one real MR image at hand (pydicom's MR_small.dcm, 64x64): the
shipped mr-denoise model against the input, Gaussian smoothing and non-local means, with
Rician noise at 3 % and 6 % of its 99.5th percentile, 10 noise draws each.

    python bench/mr_real_check.py --out docs/evaluation/mr_real.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lab.training import mr_held_out_images
from models.checkpoint import load_checkpoint
from models.engine import EngineOptions, NetworkEnhancer
from models.metrics import gaussian_baseline, nlm_baseline, psnr, ssim
from models.mr import rician

WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mr-denoise-dncnn")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    network, card = load_checkpoint(WEIGHTS / f"{args.model}.json")
    enhancer = NetworkEnhancer(network, card, EngineOptions(device="cpu"))
    reference = mr_held_out_images()["pydicom_MR_small"]
    level = float(np.percentile(reference, 99.5))
    rng = np.random.default_rng(1234)
    results: dict[str, object] = {"model": f"{card.name} {card.version}",
                                  "image": "pydicom MR_small.dcm", "draws": args.draws}  # fmt: skip
    for fraction in (0.03, 0.06):
        sigma = fraction * level
        scores: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.draws):
            noisy = rician(reference, sigma, rng)
            outputs = {
                "input": noisy,
                "gaussian": gaussian_baseline(noisy, 1.0),
                "nlm": nlm_baseline(noisy, sigma),
                "model": enhancer(noisy[None], (1.0, 1.0, 1.0))[0][0],
            }
            for method, image in outputs.items():
                scores.setdefault(method, []).append(
                    (psnr(image, reference, (0.0, level)), ssim(image, reference, (0.0, level)))
                )
        results[f"rician_sigma_{round(fraction * 100)}_percent"] = {
            method: {
                "psnr_db": round(float(np.mean([p for p, _ in v])), 3),
                "ssim": round(float(np.mean([s for _, s in v])), 4),
            }
            for method, v in scores.items()
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
