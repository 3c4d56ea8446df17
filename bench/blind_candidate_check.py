"""How much noise a denoiser removes at each added level, on validation slices.

Usage: python bench/blind_candidate_check.py OUT.json CARD.json [CARD.json ...]

Adds training-recipe and testing-recipe fan-beam noise of σ 20, 40 and 70 HU to the
normal-dose slices of the validation split and reports, in their soft tissue, the σ of the
noise the model took away and of what it left (output − reference), with NLM given the true
σ beside it. A denoiser that removes a fixed excess and keeps moderate noise shows it here.
Several cards are compared on the same noise (methods are named by card name).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lab.data import load_slices, read_manifest, select
from lab.noise import TESTING, TRAINING, simulate, soft_tissue_mask
from models.checkpoint import load_checkpoint
from models.engine import EngineOptions, NetworkEnhancer
from models.metrics import FULL_WINDOW, SOFT_TISSUE_WINDOW, nlm_baseline, psnr

LEVELS = (20.0, 40.0, 70.0)


def main(out: Path, cards: list[Path]) -> None:
    """Run the check and write ``out`` (JSON)."""
    enhancers = {}
    for card in cards:
        network, model_card = load_checkpoint(card)
        enhancers[f"{model_card.name} {model_card.version}"] = NetworkEnhancer(
            network, model_card, EngineOptions(device="cpu")
        )
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
                outputs, seconds = {}, {}
                for name, enhancer in [*enhancers.items(), ("nlm", None)]:
                    started = time.perf_counter()
                    if enhancer is None:
                        outputs[name] = nlm_baseline(np.maximum(noisy, -1024), level)
                    else:
                        outputs[name] = enhancer(noisy[None], (1.0, 1.0, 1.0))[0][0]
                    seconds[name] = time.perf_counter() - started
                for method, output in outputs.items():
                    output = np.where(field, output, reference)
                    rows.append({
                        "slice": item.entry.member, "group": item.entry.group,
                        "recipe": recipe.name, "level_hu": level, "method": method,
                        "removed_sigma_hu": float((noisy - output)[soft].std()),
                        "left_sigma_hu": float((output - reference)[soft].std()),
                        "psnr_full_db": psnr(output, reference, FULL_WINDOW),
                        "psnr_soft_tissue_db": psnr(output, reference, SOFT_TISSUE_WINDOW),
                        "seconds": seconds[method],
                    })  # fmt: skip
    summary = {}
    for recipe_name in ("training", "testing"):
        for level in LEVELS:
            for method in [*enhancers, "nlm"]:
                picked = [r for r in rows if (r["recipe"], r["level_hu"], r["method"])
                          == (recipe_name, level, method)]  # fmt: skip
                summary[f"{recipe_name} {level:.0f} HU {method}"] = {
                    key: round(float(np.mean([r[key] for r in picked])), 2)
                    for key in (
                        "removed_sigma_hu",
                        "left_sigma_hu",
                        "psnr_full_db",
                        "psnr_soft_tissue_db",
                        "seconds",
                    )
                }
    out.write_text(json.dumps({"cards": [str(card) for card in cards], "summary": summary,
                               "rows": rows}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])
