"""Tests of the HU image-quality metrics and the classical baselines, on known noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.metrics import (
    FULL_WINDOW,
    SOFT_TISSUE_WINDOW,
    cnr,
    gaussian_baseline,
    mean_bias_hu,
    nlm_baseline,
    noise_power_spectrum_2d,
    noise_reduction_percent,
    noise_sigma_hu,
    nps_mean_frequency,
    nps_mean_frequency_2d,
    psnr,
    radial_nps,
    rmse,
    snr_improvement_percent,
    ssim,
)
from models.phantoms import Phantom, low_contrast_phantom


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return low_contrast_phantom(size=256, pixel_spacing_mm=1.4, seed=3)


def _white(shape: tuple[int, ...], sigma: float, seed: int = 0) -> np.ndarray:
    return (sigma * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_identical_images(phantom: Phantom) -> None:
    image = phantom.image
    assert psnr(image, image, SOFT_TISSUE_WINDOW) == math.inf
    assert ssim(image, image, SOFT_TISSUE_WINDOW) == 1.0
    assert ssim(image[None], image[None], FULL_WINDOW) == 1.0
    assert rmse(image, image) == 0.0


def test_ssim_and_psnr_fall_with_noise(phantom: Phantom) -> None:
    noisy = phantom.image + _white(phantom.image.shape, 20.0)
    assert ssim(noisy, phantom.image, SOFT_TISSUE_WINDOW) < 0.9
    # Inside the window nothing is clipped: PSNR = 20 log10(width / sigma).
    flat = np.full((128, 128), 40.0, dtype=np.float32)
    assert psnr(flat + _white(flat.shape, 20.0), flat, SOFT_TISSUE_WINDOW) == pytest.approx(
        20 * math.log10(400 / 20), abs=0.1
    )


def test_noise_sigma_and_bias_of_white_noise(phantom: Phantom) -> None:
    noisy = phantom.image + _white(phantom.image.shape, 15.0) + 2.0
    roi = phantom.body_mask
    assert noise_sigma_hu(noisy, phantom.image, roi) == pytest.approx(15.0, rel=0.02)
    assert mean_bias_hu(noisy, phantom.image, roi) == pytest.approx(2.0, abs=0.2)
    for r in phantom.uniform_rois:
        assert abs(mean_bias_hu(noisy, phantom.image, r) - 2.0) < 5 * 15 / math.sqrt(r.sum())


def test_snr_improvement(phantom: Phantom) -> None:
    noisy = phantom.image + _white(phantom.image.shape, 20.0)
    assert snr_improvement_percent(noisy, noisy, phantom.image) == 0.0
    assert snr_improvement_percent(noisy, phantom.image, phantom.image) == math.inf
    half = phantom.image + 0.5 * (noisy - phantom.image)
    assert snr_improvement_percent(noisy, half, phantom.image) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="undefined"):
        snr_improvement_percent(phantom.image, noisy, phantom.image)


def test_noise_reduction_percent(phantom: Phantom) -> None:
    noise = _white(phantom.image.shape, 20.0)
    noisy = phantom.image + noise
    quarter = phantom.image + 0.25 * noise + 5.0  # a bias is not noise
    rois = phantom.uniform_rois
    assert noise_reduction_percent(noisy, noisy, phantom.image, rois) == 0.0
    assert noise_reduction_percent(noisy, quarter, phantom.image, rois) == pytest.approx(75.0)


def test_cnr_on_a_phantom_disk_with_known_noise(phantom: Phantom) -> None:
    disk = max((d for d in phantom.disks if d.contrast_hu == 14.0), key=lambda d: d.diameter_mm)
    assert cnr(phantom.image, disk.mask, disk.background_mask) == math.inf
    noisy = phantom.image + _white(phantom.image.shape, 5.0, seed=1)
    assert cnr(noisy, disk.mask, disk.background_mask) == pytest.approx(14.0 / 5.0, rel=0.15)


def test_nps_of_white_noise_is_flat_with_analytic_mean_frequency() -> None:
    sigma, spacing, size = 10.0, 0.5, 64
    noise = _white((4, 256, 256), sigma)
    nps = noise_power_spectrum_2d(noise, spacing, roi_size=size)
    assert nps.shape == (size, size)
    # Integral of the NPS over frequency equals the variance (mean removed per ROI).
    df = 1.0 / (size * spacing)
    assert nps.sum() * df**2 == pytest.approx(sigma**2 * (1 - 1 / size**2), rel=0.02)
    freqs, profile = radial_nps(nps, spacing)
    assert freqs[-1] == pytest.approx(1.0 / (2 * spacing))
    level = sigma**2 * spacing**2
    assert np.allclose(profile[2:], level, rtol=0.15)
    nyquist = 1.0 / (2 * spacing)
    analytic = nyquist * (math.sqrt(2) + math.asinh(1.0)) / 3.0
    assert nps_mean_frequency_2d(nps, spacing) == pytest.approx(analytic, rel=0.03)
    # Radial (TG-233) mean of a flat profile on bins 1..N/2 (ROI mean removed, DC empty).
    radial_analytic = nyquist * (0.5 + 1.0 / size)
    assert nps_mean_frequency(freqs, profile) == pytest.approx(radial_analytic, rel=0.03)


def test_nps_rois_inside_mask() -> None:
    noise = _white((128, 128), 1.0)
    mask = np.zeros((128, 128), dtype=bool)
    mask[10:80, 20:90] = True
    nps = noise_power_spectrum_2d(noise, 1.0, roi_size=32, mask=mask)
    assert nps.shape == (32, 32)
    with pytest.raises(ValueError, match="ROI"):
        noise_power_spectrum_2d(noise, 1.0, roi_size=96, mask=mask)


def test_nlm_baseline_on_flat_phantom() -> None:
    truth = np.full((128, 128), 40.0, dtype=np.float32)
    noisy = truth + _white(truth.shape, 20.0)
    denoised = nlm_baseline(noisy, 20.0)
    assert denoised.shape == truth.shape and denoised.dtype == np.float32
    roi = np.zeros(truth.shape, dtype=bool)
    roi[8:-8, 8:-8] = True
    assert noise_reduction_percent(noisy, denoised, truth, [roi]) > 50.0
    assert abs(mean_bias_hu(denoised, truth, roi)) < 1.0
    stack = nlm_baseline(np.stack([noisy, noisy]), 20.0)
    assert np.allclose(stack[1], denoised, atol=1e-4)


def test_gaussian_baseline_smooths_in_plane_only() -> None:
    noisy = 40.0 + _white((3, 64, 64), 20.0)
    smooth = gaussian_baseline(noisy, 2.0)
    assert smooth.dtype == np.float32 and smooth.shape == noisy.shape
    assert smooth.std() < 0.3 * noisy.std()
    assert np.allclose(smooth[1], gaussian_baseline(noisy[1], 2.0), atol=1e-4)
    assert np.array_equal(gaussian_baseline(noisy, 0.0), noisy)
