"""The QA gate's checks, each driven to fail by a crafted output, and passed by the
identity and by a real denoiser on real CT."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy import ndimage

from pacs_node.qa import edge_correlation, flat_noise_sigma, geometry_problems, measure
from pacs_node.settings import QALimits
from tests.helpers.synthetic import make_ct_series


def _phantom(depth: int = 6, size: int = 128, noise_hu: float = 20.0, seed: int = 0) -> np.ndarray:
    """Air around a soft-tissue disk (40 HU) holding a bone rod (700 HU) and a fat square
    (-100 HU), with white noise of ``noise_hu``; the contents move from slice to slice."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - size / 2
    volume = np.full((depth, size, size), -1000.0, dtype=np.float32)
    for z in range(depth):
        image = volume[z]
        image[x * x + y * y < (0.45 * size) ** 2] = 40.0
        cx = 10 + 2 * z
        image[(x - cx) ** 2 + (y + 12) ** 2 < 64] = 700.0
        image[(y > -30 + z) & (y < -14 + z) & (x > -20) & (x < -4)] = -100.0
    volume += rng.normal(0.0, noise_hu, volume.shape).astype(np.float32)
    return volume


def _clean(volume: np.ndarray) -> np.ndarray:
    """A stand-in for a good denoiser: a median filter in each slice."""
    return np.stack([ndimage.median_filter(s, 3) for s in volume]).astype(np.float32)


def test_identity_passes_with_a_zero_residual() -> None:
    volume = _phantom()
    report = measure(volume, volume.copy(), modality="CT")
    assert report.verdict == "pass"
    assert report.check("mean_shift").value == 0.0
    assert report.check("residual_noise_ratio").value == 0.0
    assert report.check("edge_correlation").value is None  # nothing to correlate
    assert report.noise_sigma == pytest.approx(20.0, rel=0.15)


def test_a_noise_only_change_passes() -> None:
    volume = _phantom()
    report = measure(volume, _clean(volume), modality="CT")
    assert report.verdict == "pass", report.summary()


def test_a_shift_fails_mean_shift_both_ways() -> None:
    volume = _phantom()
    for shift in (12.0, -12.0):
        report = measure(volume, _clean(volume) + shift, modality="CT")
        check = report.check("mean_shift")
        assert check.failed and check.value == pytest.approx(shift, abs=1.5)
    assert measure(volume, _clean(volume) + 3.0, modality="CT").check("mean_shift").passed


def test_added_texture_fails_the_residual_ratio() -> None:
    volume = _phantom()
    rng = np.random.default_rng(1)
    pattern = rng.normal(0.0, 60.0, volume.shape).astype(np.float32)  # 3x the noise
    report = measure(volume, volume + pattern, modality="CT")
    assert report.check("residual_noise_ratio").failed
    assert report.check("residual_noise_ratio").value > 2.5


def test_blurred_edges_fail_edge_correlation() -> None:
    volume = _phantom(noise_hu=5.0)
    blurred = ndimage.gaussian_filter(volume, (0, 3.0, 3.0))
    report = measure(volume, blurred, modality="CT")
    assert report.check("edge_correlation").failed
    assert report.check("edge_correlation").value > 0.5


def test_overshoot_at_edges_fails_range_excess() -> None:
    volume = _phantom()
    out = _clean(volume)
    rods = volume > 500
    rim = ndimage.binary_dilation(rods, iterations=2) & ~rods
    out[rim] = volume.max() + 150.0  # a bright rim beyond anything in the input
    report = measure(volume, out, modality="CT")
    assert report.check("range_excess").failed
    assert report.check("range_excess").value == pytest.approx(150.0)


def test_an_undershoot_in_air_is_not_a_range_excess() -> None:
    # A scanner that clips air at -1000 HU; the output dips 18 HU below it beside the skin
    # (seen with ct-denoise-fast on a real series): air, not a rim.
    volume = np.maximum(_phantom(), -1000.0)
    out = volume.copy()
    out[volume <= -1000.0] -= 18.0
    assert measure(volume, out, modality="CT").check("range_excess").value == 0.0
    # Bodies with no air (a crop): the low end counts again.
    crop = volume[:, 40:88, 40:88]
    low = crop.copy()
    low[0, 10, 10] = crop.min() - 30.0
    assert measure(crop, low, modality="CT").check("range_excess").value == pytest.approx(30.0)


def test_non_finite_values_fail_and_leave_the_rest_unmeasured() -> None:
    volume = _phantom()
    out = volume.copy()
    out[2, 10, 10] = np.nan
    out[3, 20, 20] = np.inf
    report = measure(volume, out, modality="CT")
    assert report.verdict == "fail" and not report.usable
    assert report.check("non_finite").value == 2.0
    assert report.check("mean_shift").value is None


def test_a_wrong_grid_fails_geometry() -> None:
    volume = _phantom()
    report = measure(volume, volume[:, :64, :], modality="CT")
    assert report.check("geometry").failed and not report.usable
    assert "expected (6, 128, 128)" in report.check("geometry").detail
    # Super-resolution: a grid twice as fine is right, and measured on the input's grid.
    fine = np.repeat(np.repeat(volume, 2, axis=1), 2, axis=2)
    assert measure(volume, fine, modality="CT", scale=2).verdict == "pass"


def test_none_limits_record_without_judging() -> None:
    volume = _phantom(noise_hu=5.0)
    blurred = ndimage.gaussian_filter(volume, (0, 3.0, 3.0))
    limits = QALimits().with_overrides({"edge_correlation": None})
    report = measure(volume, blurred, modality="CT", limits=limits)
    check = report.check("edge_correlation")
    assert check.passed and check.value is not None and check.value > 0.5
    with pytest.raises(ValueError, match="edge_corelation"):
        QALimits().with_overrides({"edge_corelation": 1.0})


def test_other_modalities_are_judged_in_units_of_their_noise() -> None:
    volume = (_phantom() + 1000.0) * 0.5  # MR-like positive values, noise σ 10
    report = measure(volume, volume + 3.0, modality="MR")
    assert report.unit == "noise σ"
    assert report.check("mean_shift").value == pytest.approx(0.3, abs=0.05)
    assert report.check("mean_shift").passed
    assert measure(volume, volume + 8.0, modality="MR").check("mean_shift").failed


def test_flat_noise_sigma_and_edge_correlation_follow_their_definitions() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 10.0, (96, 96))
    assert flat_noise_sigma(image, np.ones_like(image, bool)) == pytest.approx(10.0, rel=0.05)
    assert np.isnan(flat_noise_sigma(image, np.zeros_like(image, bool)))
    steps = np.zeros((96, 96))
    steps[:, 48:] = 500.0
    region = np.ones_like(steps, bool)
    assert edge_correlation(steps, ndimage.gaussian_filter(steps, 2.0), region) > 0.8
    assert np.isnan(edge_correlation(steps, steps, region))


def test_geometry_problems_name_what_moved() -> None:
    sources = make_ct_series(None, n_slices=3, rows=32, cols=32, pixel_spacing_mm=0.8)
    same = [copy.deepcopy(ds) for ds in sources]
    assert geometry_problems(sources, same, 1) == []
    moved = [copy.deepcopy(ds) for ds in sources]
    moved[1].ImagePositionPatient = [float(v) + 5.0 for v in moved[1].ImagePositionPatient]
    moved[2].FrameOfReferenceUID = "1.2.3.4"
    problems = geometry_problems(sources, moved, 1)
    assert problems == ["instance 2: position moved", "instance 3: frame of reference changed"]
    assert geometry_problems(sources, same[:2], 1) == ["2 derived instances for 3 sources"]
    assert "pixel spacing" in geometry_problems(sources, same, 2)[0]


def test_sample_spread_is_judged_for_stochastic_models_only() -> None:
    volume = _phantom()
    out = _clean(volume)
    deterministic = measure(volume, out, modality="CT").check("sample_spread")
    assert deterministic.passed and deterministic.value is None
    assert deterministic.detail == "a deterministic model"
    rng = np.random.default_rng(3)
    unsure = lambda: np.abs(rng.normal(0.0, 20.0, volume.shape[1:]))  # noqa: E731
    check = measure(volume, out, modality="CT", sample_spread=unsure).check("sample_spread")
    assert check.failed and check.value is not None and check.value > 40.0
    sure = lambda: np.full(volume.shape[1:], 0.5)  # noqa: E731
    assert measure(volume, out, modality="CT", sample_spread=sure).check("sample_spread").passed
