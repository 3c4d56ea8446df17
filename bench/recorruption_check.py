"""Does a denoiser remove the noise of real low-dose scans, and is it right to?

Usage: python bench/recorruption_check.py OUT.json CARD.json [CARD.json ...]

Two checks that need no test patient (they choose a recipe, so they must not):

- **Real low-dose slices** of the manifest's train and validation patients (PET/CT
  attenuation scans, 8-32 mAs; the training uses normal-dose slices only, so none of these
  was trained on). No reference exists: σ in flat soft tissue before and after, the bias
  of the soft-tissue mean, and the correlation of what was removed with the input's edges
  (:func:`lab.ct_eval.evaluate_low_dose`). NLM gets a blind σ estimate.
  A figure of every slice and method is written beside ``OUT.json`` (``OUT.png``).
- **Exact-truth phantoms** of seeds 7000+ (training uses 5000+, the evaluation 9000+)
  with the evaluation's testing-recipe noise at 20, 40 and 70 HU: noise removed, HU bias
  and low-contrast CNR against the truth itself, which a network that keeps "noise that
  looks like a reference's" cannot reach. NLM gets the true σ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from lab.ct_eval import (
    Reference,
    aggregate_phantoms,
    baseline_methods,
    enhancer_method,
    evaluate_low_dose,
    evaluate_phantoms,
)
from lab.data import load_slices, read_manifest
from models.checkpoint import load_checkpoint
from models.engine import EngineOptions, NetworkEnhancer
from models.phantoms import low_contrast_phantom

PHANTOM_SEED = 7000  # validation phantoms: neither training's 5000+ nor evaluation's 9000+
PHANTOMS = 4


def _mean_finite(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 3) if finite else None


def _figure(
    slices: list[Reference],
    outputs: dict[tuple[str, str], np.ndarray],
    methods: list[str],
    path: Path,
) -> None:
    """The centre 256 x 256 of each slice in [-160, 240] HU, one column per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(slices), len(methods), figsize=(3 * len(methods), 3 * len(slices)),
                             squeeze=False)  # fmt: skip
    for row, ref in enumerate(slices):
        for column, method in enumerate(methods):
            image = outputs[(ref.name, method)]
            top, left = image.shape[0] // 2 - 128, image.shape[1] // 2 - 128
            axis = axes[row, column]
            axis.imshow(image[top : top + 256, left : left + 256], cmap="gray", vmin=-160,
                        vmax=240)  # fmt: skip
            axis.set_title(f"{ref.name.rsplit('/', 1)[-1][:7]} {method}", fontsize=7)
            axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=48)
    plt.close(fig)


def main(out: Path, cards: list[Path]) -> None:
    """Run both checks and write ``out`` (JSON)."""
    methods = {"input": baseline_methods(False)["input"], "nlm": baseline_methods(False)["nlm"]}
    for card in cards:
        network, model_card = load_checkpoint(card)
        enhancer = NetworkEnhancer(network, model_card, EngineOptions(device="cpu"))
        methods[f"{model_card.name} {model_card.version}"] = enhancer_method(enhancer)
    entries = [e for e in read_manifest() if e.low_dose and e.split != "test"]
    slices = [
        Reference(f"{s.entry.collection}/{s.entry.member}", s.entry.group, s.hu, s.spacing_mm)
        for s in load_slices(entries, Path("../shared/data"))
    ]
    low_dose, outputs = evaluate_low_dose(slices, methods)
    _figure(slices, outputs, list(methods), out.with_suffix(".png"))
    phantoms = [
        low_contrast_phantom(512, 0.7 + 0.04 * i, PHANTOM_SEED + i, background_hu=10.0 * i)
        for i in range(PHANTOMS)
    ]
    phantom_rows = evaluate_phantoms(phantoms, methods, draws=1, seed=7)
    summary: dict[str, dict[str, float | None]] = {}
    for method in methods:
        picked = [r for r in low_dose if r["method"] == method]
        summary[f"low-dose {method}"] = {
            "median_noise_reduction_pct": round(
                float(np.median([r["noise_reduction_pct"] for r in picked])), 1
            ),
            "mean_noise_reduction_pct": round(
                float(np.mean([r["noise_reduction_pct"] for r in picked])), 1
            ),
            "max_abs_bias_hu": round(float(max(abs(r["bias_hu"]) for r in picked)), 2),
            # None for the input, which removes nothing.
            "mean_edge_correlation": _mean_finite([r["edge_correlation"] for r in picked]),
        }
    for row in aggregate_phantoms(phantom_rows):
        summary[f"phantoms {row['level_hu']:.0f} HU {row['method']}"] = {
            "noise_reduction_pct": round(float(row["noise_reduction_pct"]), 1),
            "cnr_ratio": round(float(row["cnr_ratio"]), 2),
            "worst_abs_bias_hu": round(float(row["worst_abs_bias_hu"]), 2),
        }
    out.write_text(json.dumps({"cards": [str(c) for c in cards], "summary": summary,
                               "low_dose": low_dose, "phantoms": phantom_rows},
                              indent=1, default=float) + "\n")  # fmt: skip


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(Path(sys.argv[1]), [Path(arg) for arg in sys.argv[2:]])
