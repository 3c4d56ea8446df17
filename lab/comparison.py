"""`pacs-lab compare`: train several architectures alike and evaluate them side by side.

The autoencoder comparison table of the evaluation report comes from here: every candidate
gets the same data, noise, steps, batch, patch and seed, is trained with the project's own
training code, and is then scored by the evaluation's own cases and metrics (held-out
phantoms and held-out real CT with simulated quarter dose) next to the input and
non-local means.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lab.evaluation import EvaluationConfig, phantom_cases, real_ct_cases
from lab.training import train_model
from models.checkpoint import load_checkpoint
from models.engine import EngineOptions, NetworkEnhancer
from models.evaluate import EvalCase, Method, evaluate, summarise
from models.metrics import nlm_baseline
from models.report import markdown_table, write_csv
from models.train import TrainConfig


@dataclass(frozen=True)
class Candidate:
    """One architecture of the comparison and its constructor arguments."""

    architecture: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    family: str = "autoencoder"


# 2.5D (3 slices in) like the shipped denoiser; the residual DnCNN-S is the reference. The
# autoencoders are sized to a similar budget, 0.5-0.6 M parameters each (the U-Net and
# residual ones with 16 base features, whose levels cost more).
AUTOENCODER_FAMILY: tuple[Candidate, ...] = (
    Candidate("dncnn", {"in_channels": 3, "features": 32, "depth": 6}, "residual CNN"),
    Candidate("cae", {"in_channels": 3, "features": 32, "depth": 3}),
    Candidate("unet_ae", {"in_channels": 3, "features": 16, "depth": 3}),
    Candidate("vae", {"in_channels": 3, "features": 32, "depth": 3, "latent_channels": 32}),
    Candidate("resnet_ae", {"in_channels": 3, "features": 16, "depth": 3}),
)

TABLE_COLUMNS = [
    "dataset",
    "method",
    "family",
    "parameters",
    "train_seconds",
    "psnr_full_db",
    "psnr_soft_tissue_db",
    "ssim_soft_tissue",
    "rmse_hu",
    "max_abs_bias_hu",
    "bias_standard_error_hu",
    "noise_reduction_pct",
    "nps_mean_freq_shift_pct",
    "low_contrast_cnr_ratio",
    "seconds_per_slice",
]


@dataclass(frozen=True)
class TrainingRecipe:
    """What every candidate is trained on; each value is written into the report."""

    config: TrainConfig
    noise: str = "projection"
    phantoms: int = 0
    noise_draws: int = 2
    noise_sigma_hu: float = 15.0


def _centre(volume: np.ndarray) -> np.ndarray:
    return volume[len(volume) // 2]


def _methods(enhancers: dict[str, NetworkEnhancer]) -> dict[str, Method]:
    methods: dict[str, Method] = {
        "input": lambda v, s: _centre(v),
        "nlm": lambda v, s: nlm_baseline(_centre(v), s),
    }
    for name, enhancer in enhancers.items():

        def run(volume: np.ndarray, _sigma: float, enhancer: Any = enhancer) -> np.ndarray:
            return _centre(enhancer(volume, (1.0, 1.0, 1.0))[0])

        methods[name] = run
    return methods


def compare_architectures(
    data: Path,
    candidates: Sequence[Candidate],
    recipe: TrainingRecipe,
    work_dir: Path,
    out_dir: Path,
    command: str,
    *,
    evaluation: EvaluationConfig | None = None,
    cases: Sequence[EvalCase] | None = None,
    noise_cache: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train every candidate alike, evaluate them side by side and write the table.

    Parameters
    ----------
    data
        Real CT (a DICOM folder or a .tar.xz archive); the first three quarters of each
        series train, the last quarter is held out for the evaluation.
    candidates
        The architectures, trained in this order.
    recipe
        Steps, batch, patch, seed, noise and phantoms, the same for every candidate.
    work_dir
        Where checkpoints go (they are not shipped presets). A candidate already trained
        there with the same recipe is reused, so an interrupted comparison resumes.
    out_dir
        Receives ``autoencoders.csv`` (one row per image and method) and
        ``autoencoders.md`` (the mean table per dataset).
    command
        The command line, written into each card and the table.
    evaluation
        How the evaluation report's held-out phantoms and real CT are made.
    cases
        Other evaluation cases instead of those.
    noise_cache
        Folder of cached projection-domain noise banks.
    log
        Progress messages.

    Returns
    -------
    Path
        The Markdown table.

    Raises
    ------
    ValueError
        No candidate, or training data the training code refuses.
    """
    if not candidates:
        raise ValueError("the comparison needs at least one architecture")
    enhancers: dict[str, NetworkEnhancer] = {}
    facts: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        name = f"compare-{candidate.architecture}"
        card_path = work_dir / f"{name}.json"
        recipe_text = json.dumps(
            [candidate.arch_kwargs, repr(recipe), data.name], sort_keys=True, default=str
        )
        recipe_path = work_dir / f"{name}.recipe"
        reusable = (
            card_path.is_file() and recipe_path.is_file() and recipe_path.read_text() == recipe_text
        )
        if not reusable:
            log(f"training {candidate.architecture} ({recipe.config.steps} steps)")
            card_path = train_model(
                data, work_dir, name=name, version="0.0.0", mode="denoise",
                architecture=candidate.architecture, arch_kwargs=candidate.arch_kwargs,
                context_slices=3, modality="CT",
                description=f"{candidate.architecture} trained for the architecture comparison",
                config=recipe.config, command=command, noise=recipe.noise,
                phantoms=recipe.phantoms, noise_draws=recipe.noise_draws,
                noise_sigma_hu=recipe.noise_sigma_hu, log=log, noise_cache=noise_cache,
            )  # fmt: skip
            recipe_path.write_text(recipe_text)
        network, card = load_checkpoint(card_path)
        enhancers[candidate.architecture] = NetworkEnhancer(
            network, card, EngineOptions(device="cpu")
        )
        facts[candidate.architecture] = {
            "family": candidate.family,
            "parameters": sum(p.numel() for p in network.parameters()),
            "train_seconds": float((card.training or {}).get("seconds", float("nan"))),
        }
    if cases is None:
        evaluation = evaluation or EvaluationConfig()
        cases = phantom_cases(evaluation) + real_ct_cases(data, evaluation)
    log(f"evaluating {len(enhancers)} architectures on {len(cases)} held-out cases")
    rows, _ = evaluate(cases, _methods(enhancers))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "autoencoders.csv")
    summary = summarise(rows)
    for entry in summary:
        entry.update(facts.get(entry["method"], {"family": "baseline"}))
    return _write_table(summary, recipe, out_dir, command)


def _write_table(
    summary: list[dict[str, Any]], recipe: TrainingRecipe, out_dir: Path, command: str
) -> Path:
    config = recipe.config
    draws = next((int(r["bias_draws"]) for r in summary if "bias_draws" in r), 1)
    lines = [
        "# Architecture comparison: the autoencoder family against a residual CNN",
        "",
        f"Made by `{command}`. Raw rows: [autoencoders.csv](autoencoders.csv).",
        "",
        f"Every network: {config.steps} steps, batch {config.batch_size}, {config.patch}² "
        f"patches, AdamW (learning rate {config.learning_rate}, weight decay "
        f"{config.weight_decay}), cosine schedule, seed {config.seed}, L1 loss (the VAE adds "
        f"its KL term, weight {config.kl_weight} per pixel), 3 slices in. Noise: "
        f"{recipe.noise} (added σ {recipe.noise_sigma_hu} HU x {config.noise_scale}, "
        f"{recipe.noise_draws} draws per slice); {recipe.phantoms} training phantoms.",
        "Evaluation: the cases of the evaluation report (held-out phantoms with 20 HU of "
        "simulated quarter-dose noise, held-out real CT with 11.6 HU), metrics on the "
        "centre slice; PSNR windows [-1024, 3072] (full) and [-160, 240] (soft tissue). "
        "Phantom-only columns (bias, noise reduction, NPS shift, CNR ratio) are empty for "
        "real CT, whose reference is the acquired image. Bias: the worst uniform ROI per "
        f"phantom, averaged over {draws} noise draws, with its standard error.",
        "",
    ]
    for dataset in ("phantom", "real-ct"):
        rows = [r for r in summary if r["dataset"] == dataset]
        if not rows:
            continue
        columns = [c for c in TABLE_COLUMNS if any(c in r for r in rows)]
        lines += [f"## {dataset}", "", markdown_table(rows, columns, ".2f"), ""]
    report = out_dir / "autoencoders.md"
    report.write_text("\n".join(lines))
    return report
