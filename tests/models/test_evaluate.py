"""The evaluation loop: metrics per image and method on a phantom with exact truth."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluate import EvalCase, evaluate, roi_bias, summarise
from models.metrics import gaussian_baseline
from models.phantoms import low_contrast_phantom


def _case(seed: int = 0) -> EvalCase:
    phantom = low_contrast_phantom(size=256, pixel_spacing_mm=1.4, seed=seed)
    reference = np.repeat(phantom.image[None], 3, axis=0)
    noisy = reference + np.random.default_rng(seed).normal(0, 20, reference.shape).astype(
        np.float32
    )
    return EvalCase("phantom", phantom.name, reference, noisy, 20.0, 1.4, phantom.uniform_rois,
                    phantom.disks, phantom.body_mask)  # fmt: skip


def test_metrics_rank_a_smoother_above_the_input() -> None:
    case = _case()
    methods = {
        "input": lambda v, s: v[1],
        "gaussian": lambda v, s: gaussian_baseline(v[1], 1.0),
        "truth": lambda v, s: case.reference[1],
    }
    rows, outputs = evaluate([case], methods)
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"input", "gaussian", "truth"}
    assert np.array_equal(outputs[(case.name, "input")], case.noisy[1])
    noisy, smooth, truth = by_method["input"], by_method["gaussian"], by_method["truth"]
    assert abs(noisy["noise_sigma_hu"] - 20.0) < 1.5
    assert smooth["noise_reduction_pct"] > 40 and truth["noise_reduction_pct"] == 100.0
    assert smooth["psnr_soft_tissue_db"] > noisy["psnr_soft_tissue_db"]
    assert truth["psnr_full_db"] == float("inf") and truth["ssim_soft_tissue"] == 1.0
    assert smooth["nps_mean_freq_shift_pct"] < -20  # a Gaussian removes high frequencies
    assert smooth["low_contrast_cnr_ratio"] > 1.0
    assert noisy["low_contrast_cnr_ratio"] == 1.0
    assert all(r["seconds_per_slice"] >= 0 for r in rows)


def test_summary_averages_per_dataset_and_method() -> None:
    rows, _ = evaluate([_case(0), _case(1)], {"input": lambda v, s: v[1]})
    [summary] = summarise(rows)
    assert summary["images"] == 2 and summary["method"] == "input"
    assert summary["rmse_hu"] == np.mean([r["rmse_hu"] for r in rows])


def test_linear_sr_filter_fitted_on_lr_beats_bicubic_on_a_phantom() -> None:
    from models.engine import bicubic_upsample
    from models.metrics import FULL_WINDOW, psnr
    from models.sr_baselines import bicubic_linear, degrade, fit_linear_filter

    hr = low_contrast_phantom(size=256, pixel_spacing_mm=1.4, seed=5).image[None]
    lr = degrade(hr)
    assert lr.shape == (1, 128, 128)
    kernel = fit_linear_filter(lr)
    assert kernel.shape == (5, 5) and abs(kernel.sum() - 1.0) < 0.05  # keeps mean HU
    bicubic = psnr(bicubic_upsample(lr, 2), hr, FULL_WINDOW)
    assert psnr(bicubic_linear(lr, kernel), hr, FULL_WINDOW) > bicubic


def test_roi_bias_averages_noise_draws_and_reports_its_standard_error() -> None:
    reference = np.zeros((64, 64), np.float32)
    roi = np.zeros((64, 64), bool)
    roi[16:48, 16:48] = True
    rng = np.random.default_rng(0)
    # A +2 HU shift under white noise σ 32: one draw's ROI mean has σ 32 / √1024 = 1 HU,
    # the mean of 16 draws a standard error of 0.25 HU.
    draws = [reference + 2.0 + rng.normal(0, 32, reference.shape) for _ in range(16)]
    bias, standard_error = roi_bias(draws, reference, [roi])
    assert abs(bias[0] - 2.0) < 4 * 0.25
    assert 0.15 < standard_error[0] < 0.4
    single, single_error = roi_bias(draws[:1], reference, [roi])
    assert single[0] == pytest.approx(float(np.mean(draws[0][roi])))
    assert np.isnan(single_error[0])
    with pytest.raises(ValueError, match="at least one"):
        roi_bias([], reference, [roi])


def test_bias_of_a_phantom_uses_every_noise_draw() -> None:
    case = _case()
    rng = np.random.default_rng(9)
    repeats = [
        case.reference + rng.normal(0, 20, case.reference.shape).astype(np.float32)
        for _ in range(7)
    ]
    case = EvalCase(case.dataset, case.name, case.reference, case.noisy, 20.0, 1.4,
                    case.uniform_rois, case.disks, case.nps_mask, repeats)  # fmt: skip
    methods = {
        "input": lambda v, s: v[1],
        "plus-3-hu": lambda v, s: v[1] + 3.0,
        "truth": lambda v, s: case.reference[1],
    }
    rows, _ = evaluate([case], methods)
    by_method = {r["method"]: r for r in rows}
    assert all(r["bias_draws"] == 8 for r in rows)
    truth, shifted, noisy = by_method["truth"], by_method["plus-3-hu"], by_method["input"]
    assert truth["max_abs_bias_hu"] == 0.0 and truth["bias_standard_error_hu"] == 0.0
    assert abs(shifted["max_abs_bias_hu"] - 3.0) < 4 * shifted["bias_standard_error_hu"]
    # Averaging draws shrinks the noise counted as bias below the one-draw figure.
    assert noisy["max_abs_bias_hu"] < noisy["single_draw_max_abs_roi_error_hu"]
