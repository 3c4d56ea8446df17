"""The estimators the simulator validation rests on."""

from __future__ import annotations

import numpy as np

from lab.validate_sim import ROI, detrended_nps, flat_sigma
from models.simulation import nps_mean_frequency


def test_flat_sigma_measures_white_noise_and_ignores_a_smooth_trend() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    image = 0.5 * xx + 0.2 * yy + rng.normal(0, 12.0, (128, 128))
    mask = np.ones((128, 128), dtype=bool)
    assert abs(flat_sigma(image, mask) - 12.0) < 1.0


def test_detrended_nps_removes_planes_and_keeps_the_noise_spectrum() -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :96]
    noise = rng.normal(0, 10.0, (96, 96))
    mask = np.ones((96, 96), dtype=bool)
    f_plain, nps_plain = detrended_nps(noise, mask, 0.7)
    _, nps_ramp = detrended_nps(noise + 3.0 * xx - 2.0 * yy, mask, 0.7)
    np.testing.assert_allclose(nps_ramp, nps_plain, rtol=1e-6, atol=1e-9 * nps_plain.max())
    # White noise: the mean frequency is that of a flat 2-D spectrum, well above DC.
    assert nps_mean_frequency(f_plain, nps_plain) > 0.3 * f_plain[-1]
    assert len(f_plain) == ROI // 2 + 1
