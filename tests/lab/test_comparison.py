"""`pacs-lab compare`: candidates trained alike, evaluated on the same cases, tabulated."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lab.comparison import Candidate, TrainingRecipe, compare_architectures
from models.evaluate import EvalCase
from models.phantoms import low_contrast_phantom
from models.simulation import LowDoseSimulator, ScanGeometry, calibrate_i0
from models.train import TrainConfig
from tests.helpers.synthetic import make_ct_series


def _phantom_case() -> EvalCase:
    phantom = low_contrast_phantom(size=256, pixel_spacing_mm=1.4, seed=11)
    simulator = LowDoseSimulator(phantom.image, ScanGeometry(n_views=180, pixel_spacing_mm=1.4))
    i0 = calibrate_i0(simulator, np.logical_or.reduce(phantom.uniform_rois), 20.0, 0.25)
    rng = np.random.default_rng(0)
    noisy = np.stack([simulator.low_dose(0.25, i0, 10.0, rng) for _ in range(3)])
    reference = np.repeat(phantom.image[None], 3, axis=0)
    return EvalCase("phantom", phantom.name, reference, noisy, 20.0, 1.4,
                    phantom.uniform_rois, phantom.disks, phantom.body_mask)  # fmt: skip


def test_candidates_are_trained_alike_evaluated_and_tabulated(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "data", n_slices=12, rows=64, cols=64)
    candidates = [
        Candidate("dncnn", {"in_channels": 3, "features": 8, "depth": 3}, "residual CNN"),
        Candidate("vae", {"in_channels": 3, "features": 8, "depth": 2, "latent_channels": 4}),
    ]
    recipe = TrainingRecipe(TrainConfig(steps=2, batch_size=2, patch=32), noise="image")
    messages: list[str] = []
    case = _phantom_case()
    report = compare_architectures(
        tmp_path / "data", candidates, recipe, tmp_path / "work", tmp_path / "out",
        "pacs-lab compare ...", cases=[case], log=messages.append,
    )  # fmt: skip
    assert sum(m.startswith("training ") for m in messages) == 2
    with open(tmp_path / "out" / "autoencoders.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["input", "nlm", "dncnn", "vae"]
    assert all(r["image"] == case.name for r in rows)
    text = report.read_text()
    assert report == tmp_path / "out" / "autoencoders.md"
    assert "`pacs-lab compare ...`" in text and "2 steps, batch 2" in text
    # Parameter counts are the networks' own.
    from models.networks import build_network

    params = sum(p.numel() for p in build_network("vae", **candidates[1].arch_kwargs).parameters())
    assert f"| phantom | vae | autoencoder | {params} |" in text
    assert "| phantom | nlm | baseline |" in text

    # Same recipe: the checkpoints are reused; another recipe trains again.
    messages.clear()
    compare_architectures(
        tmp_path / "data", candidates[:1], recipe, tmp_path / "work", tmp_path / "out",
        "again", cases=[case], log=messages.append,
    )  # fmt: skip
    assert not any(m.startswith("training ") for m in messages)
    longer = TrainingRecipe(TrainConfig(steps=3, batch_size=2, patch=32), noise="image")
    compare_architectures(
        tmp_path / "data", candidates[:1], longer, tmp_path / "work", tmp_path / "out",
        "again", cases=[case], log=messages.append,
    )  # fmt: skip
    assert sum(m.startswith("training ") for m in messages) == 1


def test_an_empty_comparison_is_refused(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="at least one"):
        compare_architectures(
            tmp_path, [], TrainingRecipe(TrainConfig()), tmp_path, tmp_path, "", cases=[]
        )


def test_the_command_refuses_unknown_architectures_and_noise(tmp_path: Path) -> None:
    import subprocess

    from tests.integration.node import BIN

    make_ct_series(tmp_path / "data", n_slices=8, rows=32, cols=32)
    base = [str(BIN / "pacs-lab"), "compare", "--data", str(tmp_path / "data"),
            "--work-dir", str(tmp_path / "work"), "--output", str(tmp_path / "out")]  # fmt: skip
    unknown = subprocess.run([*base, "--architecture", "transformer"], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert unknown.returncode == 2 and "unknown architecture" in unknown.stdout
    noise = subprocess.run([*base, "--noise", "poisson"], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert noise.returncode == 2 and "--noise must be image or projection" in noise.stdout
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()
