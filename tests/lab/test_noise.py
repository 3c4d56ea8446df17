"""The training noise bank: σ on target, reproducible, reused from its cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lab.noise import TESTING, TRAINING, NoiseRecipe, noise_bank, simulate, soft_tissue_mask
from models.fanbeam import FanBeamGeometry

RECIPE = NoiseRecipe("tiny", (FanBeamGeometry(541.0, 949.0, n_views=90),))
SPACING = 3.0


def _body(size: int = 96) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    image = np.full((size, size), -1000.0, dtype=np.float32)
    image[(xx / 40) ** 2 + (yy / 30) ** 2 < 1] = 40.0
    return image


def test_each_draw_has_the_wanted_sigma_in_soft_tissue() -> None:
    image = _body()
    noise, used = simulate(image, SPACING, RECIPE, [20.0, 70.0, None], seed=1)
    roi = soft_tissue_mask(image)
    assert abs(float(noise[0][roi].std()) - 20.0) < 0.5
    assert abs(float(noise[1][roi].std()) - 70.0) < 1.5
    assert RECIPE.sigma_range_hu[0] <= used[2]["sigma_hu"] <= RECIPE.sigma_range_hu[1]
    assert len({u["cutoff"] for u in used}) == 3  # a kernel per draw


def test_the_bank_is_reproducible_and_cached(tmp_path: Path) -> None:
    images, spacings = [_body(), _body() + 10], [SPACING, SPACING]
    logs: list[str] = []
    first = noise_bank(images, spacings, RECIPE, 2, seed=0, cache_dir=tmp_path, log=logs.append)
    assert [b.shape for b in first] == [(2, 1, 96, 96)] * 2
    assert len(list(tmp_path.glob("*.npy"))) == 2 and len(logs) == 2
    again = noise_bank(images, spacings, RECIPE, 2, seed=0, cache_dir=tmp_path, log=logs.append)
    assert len(logs) == 2  # nothing simulated the second time
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = noise_bank(images, spacings, RECIPE, 2, seed=1, log=logs.append)
    assert not np.array_equal(other[0], first[0])


def test_a_mixed_recipe_draws_every_window_and_geometry() -> None:
    mixed = NoiseRecipe(
        "mixed",
        (FanBeamGeometry(541.0, 949.0, n_views=90), FanBeamGeometry(570.0, 1040.0, n_views=90)),
        windows=("cosine", "gaussian"),
    )
    windows, distances = set(), set()
    for seed in range(6):
        _, used = simulate(_body(64), SPACING, mixed, [20.0, 20.0], seed=seed)
        windows |= {u["window"] for u in used}
        distances |= {u["source_to_iso_mm"] for u in used}
    assert windows == {"cosine", "gaussian"} and distances == {541.0, 570.0}


def test_testing_noise_is_made_differently_from_training_noise() -> None:
    assert not set(TESTING.windows) & set(TRAINING.windows)
    assert not set(TESTING.geometries) & set(TRAINING.geometries)
    with pytest.raises(ValueError, match="at least one"):
        NoiseRecipe("empty", ())
