"""The references' own noise, measured and re-drawn for Recorrupted-to-Recorrupted."""

from __future__ import annotations

import numpy as np

from lab.native_noise import measure_native_noise, native_bank, native_field
from models.noise import ct_like_noise


def _body(size: int = 256) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    image = np.full((size, size), -1024.0, dtype=np.float32)
    image[(xx / 120) ** 2 + (yy / 100) ** 2 < 1] = 40.0
    return image


def _autocovariance(field: np.ndarray, lags: int) -> np.ndarray:
    values = field - field.mean()
    return np.array([float(np.mean(values[:, : values.shape[1] - k] * values[:, k:]))
                     for k in range(lags)])  # fmt: skip


def test_the_measured_noise_is_redrawn_with_its_sigma_and_correlation() -> None:
    rng = np.random.default_rng(0)
    image = _body()
    inside = image > -500
    for cutoff in (0.25, 0.5):  # coarse and fine textures
        acquired = ct_like_noise((1, 256, 256), 25.0, rng, cutoff)[0]
        measured = measure_native_noise(np.where(inside, image + acquired, image))
        assert measured is not None
        assert abs(measured.sigma_hu - 25.0) < 2.5
        field = native_field(measured, (256, 256), np.random.default_rng(1))
        assert abs(float(field.std()) - measured.sigma_hu) < 0.05
        # Recorruption is unbiased only where the field's covariance is the noise's.
        np.testing.assert_allclose(_autocovariance(field, 4), _autocovariance(acquired, 4),
                                   atol=0.12 * 25.0**2)  # fmt: skip


def test_phantoms_and_slices_without_soft_tissue_get_no_noise() -> None:
    rng = np.random.default_rng(2)
    body = _body()
    noisy = np.where(body > -500, body + rng.normal(0, 15, body.shape), body).astype(np.float32)
    air = np.full((256, 256), -1024.0, dtype=np.float32)
    bank, measured = native_bank([noisy, body, air], ["tcga/a", "phantom/5000", "tcga/air"], 2, 0)
    assert [b.shape for b in bank] == [(2, 1, 256, 256)] * 3
    assert measured[0] is not None and measured[1] is None and measured[2] is None
    assert not bank[1].any() and not bank[2].any()
    # Noise only inside the body, independent draws, the same for the same seed.
    assert not bank[0][:, :, :4, :4].any() and bank[0][:, :, 128, 100:160].std() > 5
    assert not np.array_equal(bank[0][0], bank[0][1])
    np.testing.assert_array_equal(native_bank([noisy], ["tcga/a"], 2, 0)[0][0], bank[0])
