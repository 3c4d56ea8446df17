"""How much noise a denoiser removes at each added level, on validation slices.

Usage: python bench/blind_candidate_check.py CARD.json OUT.json

Adds training-recipe and testing-recipe fan-beam noise of σ 20, 40 and 70 HU to the
normal-dose slices of the validation split and reports, in their soft tissue, the σ of the
noise the model took away and of what it left (output − reference), with NLM given the true
σ beside it. A denoiser that removes a fixed excess and keeps moderate noise shows it here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from lab.data import load_slices, read_manifest, select
from lab.noise import TESTING, TRAINING, simulate, soft_tissue_mask
from models.checkpoint import load_checkpoint
from models.engine import EngineOptions, NetworkEnhancer
from models.metrics import FULL_WINDOW, SOFT_TISSUE_WINDOW, nlm_baseline, psnr

LEVELS = (20.0, 40.0, 70.0)


def main(card: Path, out: Path) -> None:
    """Run the check and write ``out`` (JSON)."""
    network, model_card = load_checkpoint(card)
    enhancer = NetworkEnhancer(network, model_card, EngineOptions(device="cpu"))
    entries = select(read_manifest(), "validation")
    rows = []
    for item in load_slices(entries, Path("../shared/data")):
        reference = item.hu
        soft = soft_tissue_mask(np.maximum(reference, -1024))
        field = reference >= -1024
        for recipe in (TRAINING, TESTING):
            noises, _ = simulate(reference, item.spacing_mm, recipe, list(LEVELS), seed=11)
            for level, noise in zip(LEVELS, noises, strict=True):
                noisy = np.where(field, reference + noise, reference).astype(np.float32)
                outputs = {
                    "model": enhancer(noisy[None], (1.0, 1.0, 1.0))[0][0],
                    "nlm": nlm_baseline(np.maximum(noisy, -1024), level),
                }
                for method, output in outputs.items():
                    output = np.where(field, output, reference)
                    rows.append({
                        "slice": item.entry.member, "group": item.entry.group,
                        "recipe": recipe.name, "level_hu": level, "method": method,
                        "removed_sigma_hu": float((noisy - output)[soft].std()),
                        "left_sigma_hu": float((output - reference)[soft].std()),
                        "psnr_full_db": psnr(output, reference, FULL_WINDOW),
                        "psnr_soft_tissue_db": psnr(output, reference, SOFT_TISSUE_WINDOW),
                    })  # fmt: skip
    summary = {}
    for recipe in ("training", "testing"):
        for level in LEVELS:
            for method in ("model", "nlm"):
                picked = [r for r in rows if (r["recipe"], r["level_hu"], r["method"])
                          == (recipe, level, method)]  # fmt: skip
                summary[f"{recipe} {level:.0f} HU {method}"] = {
                    key: round(float(np.mean([r[key] for r in picked])), 2)
                    for key in (
                        "removed_sigma_hu",
                        "left_sigma_hu",
                        "psnr_full_db",
                        "psnr_soft_tissue_db",
                    )
                }
    out.write_text(json.dumps({"card": str(card), "model": f"{model_card.name} "
                               f"{model_card.version}", "summary": summary, "rows": rows},
                              indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
