"""MR phantoms, Rician noise and the per-volume normalisation MR cards use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.checkpoint import ModelCard
from models.engine import EngineOptions, NetworkEnhancer
from models.mr import mr_phantom, rician
from models.networks import build_network


def _mr_card(kwargs: dict[str, object]) -> ModelCard:
    return ModelCard(
        name="mr", version="1", task="denoise", modality="MR", architecture="dncnn",
        arch_kwargs=kwargs, normalisation="volume", weights_sha256="0" * 64,
    )  # fmt: skip


def test_phantom_is_reproducible_non_negative_and_varied() -> None:
    first, again, other = mr_phantom(128, seed=3), mr_phantom(128, seed=3), mr_phantom(128, seed=4)
    np.testing.assert_array_equal(first, again)
    assert first.dtype == np.float32 and first.shape == (128, 128)
    assert first.min() >= 0 and 300 * 0.5 < first.max() < 3000 * 2
    assert not np.array_equal(first, other)
    assert first[0, 0] == 0.0  # air outside the head
    with pytest.raises(ValueError, match="size"):
        mr_phantom(16)


def test_rician_noise_has_the_expected_moments() -> None:
    rng = np.random.default_rng(0)
    sigma = 10.0
    background = rician(np.zeros((200, 200), np.float32), sigma, rng)
    # Pure noise: Rayleigh distribution with mean sigma * sqrt(pi / 2).
    assert background.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    bright = rician(np.full((200, 200), 1000.0, np.float32), sigma, rng)
    # High SNR: approximately Gaussian around the signal.
    assert bright.mean() == pytest.approx(1000.0, abs=0.5)
    assert bright.std() == pytest.approx(sigma, rel=0.05)


def test_volume_normalisation_uses_a_power_of_two_above_the_percentile() -> None:
    card = _mr_card({"in_channels": 1, "features": 8, "depth": 3})
    volume = np.linspace(0, 1500, 1000, dtype=np.float32)
    low, high = card.intensity_range(volume)
    assert (low, high) == (0.0, 2048.0)
    assert card.output_range(volume) == (0.0, 1500.0)
    with pytest.raises(ValueError, match="normalisation"):
        ModelCard(name="x", version="1", task="denoise", modality="MR", architecture="dncnn",
                  arch_kwargs={}, normalisation="zscore")  # fmt: skip


def test_card_without_normalisation_key_reads_as_window() -> None:
    card = _mr_card({})
    text = card.to_json().replace('"normalisation": "volume",', "")
    assert "normalisation" not in text
    assert ModelCard.from_json(text).normalisation == "window"


@pytest.mark.parametrize("scale", [1.0, 37.0])
def test_untrained_network_returns_mr_values_exactly_at_any_scale(scale: float) -> None:
    kwargs = {"in_channels": 1, "features": 8, "depth": 3}
    enhancer = NetworkEnhancer(
        build_network("dncnn", **kwargs), _mr_card(kwargs), EngineOptions(device="cpu")
    )
    volume = np.stack([mr_phantom(64, seed=s) for s in range(2)]) * np.float32(scale)
    volume = volume.round().astype(np.float32)
    out, spacing = enhancer(volume, (5.0, 0.9, 0.9))
    np.testing.assert_array_equal(out, volume)
    assert spacing == (5.0, 0.9, 0.9)
