"""Tests of the projection-domain low-dose CT simulator on a water-cylinder phantom."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from skimage.transform import iradon

from models.simulation import (
    MU_WATER_PER_MM,
    LowDoseSimulator,
    ScanGeometry,
    calibrate_i0,
    extra_line_integral_variance,
    noise_power_spectrum,
    nps_mean_frequency,
)

SIZE = 128
SPACING_MM = 2.5  # 90-pixel cylinder = 225 mm of water: an abdomen-sized attenuation
I0 = 1.0e5


def _radius_map(size: int = SIZE) -> np.ndarray:
    offsets = np.arange(size) - size // 2
    return np.hypot(offsets[:, None], offsets[None, :])


def _phantom() -> np.ndarray:
    """Water cylinder (0 HU) in air with a cortical-bone insert (1000 HU)."""
    image = np.full((SIZE, SIZE), -1000.0)
    image[_radius_map() < 45] = 0.0
    offsets = np.arange(SIZE) - SIZE // 2
    bone = np.hypot(offsets[:, None] - 15, offsets[None, :] + 20) < 8
    image[bone] = 1000.0
    return image


@pytest.fixture(scope="module")
def simulator() -> LowDoseSimulator:
    return LowDoseSimulator(_phantom(), ScanGeometry(n_views=256, pixel_spacing_mm=SPACING_MM))


@pytest.fixture(scope="module")
def centre() -> np.ndarray:
    """Uniform water ROI at the centre, clear of the bone insert."""
    return _radius_map() < 12


@pytest.fixture(scope="module")
def water() -> np.ndarray:
    return _radius_map() < 40


@pytest.fixture(scope="module")
def air(simulator: LowDoseSimulator) -> np.ndarray:
    """Air inside the reconstruction circle, outside the cylinder."""
    return simulator.fov_mask & (_radius_map() > 50)


def _sigma(noise: np.ndarray, roi: np.ndarray) -> float:
    return float(np.std(noise[roi], ddof=1))


def test_variance_formula_matches_the_count_model() -> None:
    # Monte Carlo of the model the formula is derived from: N = Poisson(I0 e^-p) + N(0, var_e)
    # at full dose and at a * I0; the added variance must close the gap in Var(-ln(N / I0)).
    rng = np.random.default_rng(1)
    i0, var_e, a, samples = 1.0e5, 200.0, 0.25, 2_000_000
    for p in (1.0, 4.0):

        def line_integral_var(flux: float, p: float = p) -> float:
            counts = rng.poisson(flux * np.exp(-p), samples) + rng.normal(
                0.0, np.sqrt(var_e), samples
            )
            return float(np.var(-np.log(counts / flux)))

        measured = line_integral_var(a * i0) - line_integral_var(i0)
        predicted = float(extra_line_integral_variance(np.exp(p), a, i0, var_e))
        assert measured == pytest.approx(predicted, rel=0.03)


def test_reconstruction_recovers_the_hounsfield_units(simulator: LowDoseSimulator) -> None:
    hu = simulator.reconstruct(simulator.sinogram) * 1000.0 / MU_WATER_PER_MM - 1000.0
    assert abs(float(hu[_radius_map() < 10].mean())) < 5.0
    offsets = np.arange(SIZE) - SIZE // 2
    bone_core = np.hypot(offsets[:, None] - 15, offsets[None, :] + 20) < 4
    assert float(hu[bone_core].mean()) == pytest.approx(1000.0, rel=0.02)


def test_back_projection_follows_the_skimage_geometry() -> None:
    # With the plain ramp our FBP is skimage's iradon restricted to the inscribed circle.
    sim = LowDoseSimulator(np.zeros((64, 64)), ScanGeometry(90, 1.0, "ramp"))
    sinogram = np.random.default_rng(0).standard_normal(sim.sinogram.shape)
    theta = np.arange(90) * 180.0 / 90
    reference = iradon(sinogram.T, theta=theta, filter_name="ramp", circle=False, output_size=64)
    reference[~sim.fov_mask] = 0.0
    np.testing.assert_allclose(sim.reconstruct(sinogram), reference, atol=1e-10)


def test_extra_noise_has_zero_mean(simulator: LowDoseSimulator, water: np.ndarray) -> None:
    noise = simulator.extra_noise(0.25, I0, 10.0, np.random.default_rng(3))
    assert abs(float(noise[water].mean())) < 0.05 * _sigma(noise, water)


def test_noise_decreases_with_dose_and_vanishes_at_full_dose(
    simulator: LowDoseSimulator, centre: np.ndarray
) -> None:
    sigmas = [
        _sigma(simulator.extra_noise(a, I0, 10.0, np.random.default_rng(0)), centre)
        for a in (0.1, 0.25, 0.5, 0.9)
    ]
    assert all(high > low for high, low in itertools.pairwise(sigmas))
    full = simulator.extra_noise(1.0, I0, 10.0, np.random.default_rng(0))
    assert not full.any()
    np.testing.assert_array_equal(
        simulator.low_dose(1.0, I0, 10.0, np.random.default_rng(0)), _phantom()
    )


def test_noise_scales_with_dose_fraction(simulator: LowDoseSimulator, centre: np.ndarray) -> None:
    # Negligible electronic noise: sigma ~ sqrt((1 - a) / a), so sigma(1/4) / sigma(1/2) = sqrt(3).
    quarter = simulator.extra_noise(0.25, I0, 1e-3, np.random.default_rng(5))
    half = simulator.extra_noise(0.5, I0, 1e-3, np.random.default_rng(5))
    assert _sigma(quarter, centre) / _sigma(half, centre) == pytest.approx(np.sqrt(3.0), rel=0.02)


def test_noise_scales_with_inverse_root_flux(
    simulator: LowDoseSimulator, centre: np.ndarray
) -> None:
    low = simulator.extra_noise(0.25, I0, 1e-3, np.random.default_rng(6))
    high = simulator.extra_noise(0.25, 4 * I0, 1e-3, np.random.default_rng(6))
    assert _sigma(high, centre) / _sigma(low, centre) == pytest.approx(0.5, rel=0.02)


def test_electronic_noise_matters_most_behind_attenuation(
    simulator: LowDoseSimulator, centre: np.ndarray, air: np.ndarray
) -> None:
    # The electronic term grows as exp(2p): rays through the cylinder's centre (p ~ 4.3)
    # gain far more than those through air, so the central noise rises the most.
    quantum = simulator.extra_noise(0.25, 1e4, 0.0, np.random.default_rng(7))
    both = simulator.extra_noise(0.25, 1e4, 100.0, np.random.default_rng(7))
    gain_centre = _sigma(both, centre) / _sigma(quantum, centre)
    gain_air = _sigma(both, air) / _sigma(quantum, air)
    assert gain_centre > gain_air > 1.0
    assert gain_centre > 1.5


def test_seed_determines_the_noise(simulator: LowDoseSimulator) -> None:
    first = simulator.extra_noise(0.25, I0, 10.0, np.random.default_rng(11))
    again = simulator.extra_noise(0.25, I0, 10.0, np.random.default_rng(11))
    other = simulator.extra_noise(0.25, I0, 10.0, np.random.default_rng(12))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_noise_is_zero_outside_the_reconstruction_circle(simulator: LowDoseSimulator) -> None:
    noise = simulator.extra_noise(0.25, I0, 10.0, np.random.default_rng(0))
    assert noise.shape == (SIZE, SIZE)
    assert not noise[~simulator.fov_mask].any()
    assert noise[simulator.fov_mask].std() > 0


def test_cached_sinogram_serves_several_draws(simulator: LowDoseSimulator) -> None:
    sinogram = simulator.sinogram
    first = simulator.extra_noise(0.25, I0, 10.0, np.random.default_rng(1))
    second = simulator.extra_noise(0.5, I0, 10.0, np.random.default_rng(2))
    assert simulator.sinogram is sinogram
    assert not sinogram.flags.writeable
    assert not np.allclose(first, second)


def test_variance_map_matches_monte_carlo(
    simulator: LowDoseSimulator, centre: np.ndarray, air: np.ndarray
) -> None:
    expected = simulator.noise_variance_map(0.25, 1e4, 100.0)
    draws = np.stack(
        [simulator.extra_noise(0.25, 1e4, 100.0, np.random.default_rng(s)) for s in range(60)]
    )
    measured = draws.var(axis=0)
    for roi in (centre, air):
        assert measured[roi].mean() == pytest.approx(expected[roi].mean(), rel=0.06)
    assert not expected[~simulator.fov_mask].any()


def test_calibrate_i0_hits_the_target_sigma(
    simulator: LowDoseSimulator, centre: np.ndarray
) -> None:
    target = 20.0
    i0 = calibrate_i0(simulator, centre, target, 0.25, electronic_noise_var=10.0)
    expected = np.sqrt(simulator.noise_variance_map(0.25, i0, 10.0)[centre].mean())
    assert expected == pytest.approx(target, rel=1e-6)
    sigmas = [
        _sigma(simulator.extra_noise(0.25, i0, 10.0, np.random.default_rng(s)), centre)
        for s in range(12)
    ]
    assert float(np.sqrt(np.mean(np.square(sigmas)))) == pytest.approx(target, rel=0.05)
    # Quantum noise only: sigma ~ I0^-1/2, so a quarter of the variance needs 4x the flux.
    i0_quantum = calibrate_i0(simulator, centre, target, 0.25, electronic_noise_var=0.0)
    assert calibrate_i0(simulator, centre, target / 2, 0.25, 0.0) == pytest.approx(
        4 * i0_quantum, rel=1e-9
    )
    assert i0 > i0_quantum  # electronic noise adds variance: more flux for the same sigma


def test_nps_of_white_noise_is_flat_and_integrates_to_the_variance() -> None:
    sigma, spacing = 3.0, 0.5
    white = np.random.default_rng(0).normal(0.0, sigma, (4, 128, 128))
    freqs, nps = noise_power_spectrum(white, 32, spacing)
    assert freqs[1] == pytest.approx(1.0 / (32 * spacing))
    assert freqs[-1] == pytest.approx(0.5 / spacing)  # Nyquist
    np.testing.assert_allclose(nps[1:], sigma**2 * spacing**2, rtol=0.1)
    # Flat over the non-zero bins (the ROI mean removes the DC bin): f_av = mean frequency.
    assert nps_mean_frequency(freqs, nps) == pytest.approx(freqs[1:].mean(), rel=0.03)


def test_simulated_noise_has_an_fbp_spectrum(simulator: LowDoseSimulator) -> None:
    noise = np.stack(
        [simulator.extra_noise(0.25, I0, 10.0, np.random.default_rng(s)) for s in range(6)]
    )
    freqs, nps = noise_power_spectrum(noise, 32, SPACING_MM, mask=simulator.fov_mask)
    white = np.random.default_rng(0).standard_normal(noise.shape)
    white_freqs, white_nps = noise_power_spectrum(white, 32, SPACING_MM, mask=simulator.fov_mask)
    assert nps_mean_frequency(freqs, nps) < 0.85 * nps_mean_frequency(white_freqs, white_nps)
    # The ramp: power rises from ~0 at zero frequency, peaks at mid frequencies and falls
    # with the Hann window; white noise is flat from the first non-zero bin.
    assert nps[0] == pytest.approx(0.0, abs=1e-12 * nps.max())
    assert nps[1] < nps[2] < nps[3]
    assert nps[1] < 0.5 * nps.max()
    assert white_nps[1] > 0.7 * white_nps.max()
    assert 2 < int(np.argmax(nps)) < len(nps) // 2
    assert nps[-1] < 0.05 * nps.max()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"dose_fraction": 0.0}, "dose_fraction"),
        ({"dose_fraction": 1.5}, "dose_fraction"),
        ({"i0": -1.0}, "i0"),
        ({"i0": float("nan")}, "i0"),
        ({"electronic_noise_var": -1.0}, "electronic_noise_var"),
        ({"rng": 0}, "rng"),
    ],
)
def test_extra_noise_rejects_bad_arguments(
    simulator: LowDoseSimulator, kwargs: dict[str, object], argument: str
) -> None:
    arguments: dict[str, object] = {
        "dose_fraction": 0.25,
        "i0": I0,
        "electronic_noise_var": 10.0,
        "rng": np.random.default_rng(0),
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        simulator.extra_noise(**arguments)  # type: ignore[arg-type]


def test_constructors_and_helpers_reject_bad_arguments(
    simulator: LowDoseSimulator, centre: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="n_views"):
        ScanGeometry(n_views=1)
    with pytest.raises(ValueError, match="pixel_spacing_mm"):
        ScanGeometry(pixel_spacing_mm=0.0)
    with pytest.raises(ValueError, match="filter_name"):
        ScanGeometry(filter_name="butterworth")
    with pytest.raises(ValueError, match="image_hu"):
        LowDoseSimulator(np.zeros((16, 32)), ScanGeometry())
    with pytest.raises(ValueError, match="dose_fraction"):
        calibrate_i0(simulator, centre, 20.0, 1.0)
    with pytest.raises(ValueError, match="target_sigma_hu"):
        calibrate_i0(simulator, centre, 0.0, 0.25)
    with pytest.raises(ValueError, match="roi"):
        calibrate_i0(simulator, np.ones((SIZE, SIZE), dtype=bool), 20.0, 0.25)
    with pytest.raises(ValueError, match="roi_size"):
        noise_power_spectrum(np.zeros((32, 32)), 2, 1.0)
    with pytest.raises(ValueError, match="nps"):
        nps_mean_frequency(np.arange(3.0), np.zeros(3))
