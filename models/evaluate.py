"""Evaluation of denoisers against baselines on cases with a reference: metrics per image."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.metrics import (
    FULL_WINDOW,
    SOFT_TISSUE_WINDOW,
    cnr,
    mean_bias_hu,
    noise_power_spectrum_2d,
    nps_mean_frequency_2d,
    pooled_noise_sigma_hu,
    psnr,
    rmse,
    snr_improvement_percent,
    ssim,
)
from models.phantoms import Disk

# A method maps a noisy volume (z, y, x), whose centre slice is evaluated, and the true
# noise σ (only non-local means uses it) to the enhanced centre slice.
Method = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class EvalCase:
    """A few adjacent slices with their reference; metrics are taken on the centre slice.

    ``uniform_rois``, ``disks`` and ``nps_mask`` exist for phantoms (exact truth); on real
    CT the reference is the acquired image and only the full-image metrics are reported.
    ``repeats`` are further noisy volumes of the same case, independent noise of the same
    dose: the HU bias in ``uniform_rois`` is averaged over ``noisy`` and these, because in
    one draw the mean of an ROI still carries low-frequency noise of a few HU.
    """

    dataset: str
    name: str
    reference: np.ndarray
    noisy: np.ndarray
    sigma_hu: float
    pixel_spacing_mm: float
    uniform_rois: list[np.ndarray] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    nps_mask: np.ndarray | None = None
    repeats: list[np.ndarray] = field(default_factory=list)

    @property
    def centre(self) -> int:
        """Index of the evaluated slice."""
        return self.reference.shape[0] // 2


def roi_bias(
    estimates: Sequence[np.ndarray], reference: np.ndarray, rois: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean HU bias per ROI over independent noise draws, with its standard error.

    Parameters
    ----------
    estimates : sequence of np.ndarray
        The method's output for each noise draw of one case, in HU.
    reference : np.ndarray
        The exact truth, in HU.
    rois : sequence of np.ndarray
        Boolean masks of uniform regions.

    Returns
    -------
    bias : np.ndarray
        Per ROI, the mean over draws of ``mean(estimate - reference)`` inside the ROI.
    standard_error : np.ndarray
        Per ROI, the standard error of that mean (NaN with a single draw).
    """
    if not estimates or not rois:
        raise ValueError("roi_bias needs at least one estimate and one ROI")
    errors = np.array([[mean_bias_hu(e, reference, roi) for roi in rois] for e in estimates])
    if len(estimates) == 1:
        return errors[0], np.full(len(rois), np.nan)
    return errors.mean(axis=0), errors.std(axis=0, ddof=1) / np.sqrt(len(estimates))


def _phantom_metrics(
    case: EvalCase,
    noisy: np.ndarray,
    estimate: np.ndarray,
    reference: np.ndarray,
    repeats: Sequence[np.ndarray],
) -> dict[str, float]:
    rois = case.uniform_rois
    bias, standard_error = roi_bias([estimate, *repeats], reference, rois)
    worst = int(np.argmax(np.abs(bias)))
    row: dict[str, float] = {
        "max_abs_bias_hu": float(abs(bias[worst])),
        "bias_standard_error_hu": float(standard_error[worst]),
        "bias_draws": 1 + len(repeats),
        "single_draw_max_abs_roi_error_hu": max(
            abs(mean_bias_hu(estimate, reference, roi)) for roi in rois
        ),
        "noise_sigma_hu": pooled_noise_sigma_hu(estimate, reference, rois),
        "noise_reduction_pct": 100.0
        * (
            1.0
            - pooled_noise_sigma_hu(estimate, reference, rois)
            / pooled_noise_sigma_hu(noisy, reference, rois)
        ),
    }
    if case.nps_mask is not None:
        spacing = case.pixel_spacing_mm
        nps_in = noise_power_spectrum_2d(noisy - reference, spacing, mask=case.nps_mask)
        nps_out = noise_power_spectrum_2d(estimate - reference, spacing, mask=case.nps_mask)
        f_in = nps_mean_frequency_2d(nps_in, spacing)
        # A noise-free estimate has no noise texture: its mean frequency is undefined.
        f_out = nps_mean_frequency_2d(nps_out, spacing) if nps_out.sum() > 0 else float("nan")
        row["nps_mean_freq_per_mm"] = f_out
        row["nps_mean_freq_shift_pct"] = 100.0 * (f_out / f_in - 1.0)
    low_contrast = [d for d in case.disks if d.contrast_hu <= 14]
    if low_contrast:
        row["low_contrast_cnr"] = float(
            np.mean([cnr(estimate, d.mask, d.background_mask) for d in low_contrast])
        )
        cnr_in = float(np.mean([cnr(noisy, d.mask, d.background_mask) for d in low_contrast]))
        row["low_contrast_cnr_ratio"] = row["low_contrast_cnr"] / cnr_in
    return row


def evaluate(
    cases: Sequence[EvalCase], methods: Mapping[str, Method]
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """Run every method on every case.

    Returns
    -------
    rows
        One dict per (case, method): PSNR at both windows, SSIM at both windows, RMSE,
        SNR improvement, seconds per slice (of the first draw) and, for phantoms, the HU
        bias in uniform regions (worst ROI, averaged over ``noisy`` and ``repeats``, with
        its standard error; and the worst ROI-mean error of the first draw alone), noise σ
        and its reduction, NPS mean-frequency shift and low-contrast CNR (first draw).
    outputs
        The enhanced centre slice of each (case name, method).
    """
    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[str, str], np.ndarray] = {}
    for case in cases:
        reference = case.reference[case.centre].astype(np.float32)
        noisy = case.noisy[case.centre].astype(np.float32)
        for method, run in methods.items():
            started = time.perf_counter()
            estimate = np.asarray(run(case.noisy, case.sigma_hu), dtype=np.float32)
            seconds = time.perf_counter() - started
            outputs[(case.name, method)] = estimate
            row: dict[str, Any] = {
                "dataset": case.dataset,
                "image": case.name,
                "method": method,
                "psnr_full_db": psnr(estimate, reference, FULL_WINDOW),
                "psnr_soft_tissue_db": psnr(estimate, reference, SOFT_TISSUE_WINDOW),
                "ssim_full": ssim(estimate, reference, FULL_WINDOW),
                "ssim_soft_tissue": ssim(estimate, reference, SOFT_TISSUE_WINDOW),
                "rmse_hu": rmse(estimate, reference),
                "snr_improvement_pct": snr_improvement_percent(noisy, estimate, reference)
                if method != "input"
                else 0.0,
                "seconds_per_slice": seconds,
            }
            if case.uniform_rois:
                repeats = [
                    np.asarray(run(volume, case.sigma_hu), dtype=np.float32)
                    for volume in case.repeats
                ]
                row.update(_phantom_metrics(case, noisy, estimate, reference, repeats))
            rows.append(row)
    return rows, outputs


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every numeric column per (dataset, method), in first-seen order."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["method"])].append(row)
    summary = []
    for (dataset, method), members in groups.items():
        entry: dict[str, Any] = {"dataset": dataset, "method": method, "images": len(members)}
        numeric = [
            k
            for k, v in members[0].items()
            if isinstance(v, float | int) and not isinstance(v, bool)
        ]
        for key in numeric:
            values = [float(m[key]) for m in members if key in m]
            entry[key] = float(np.mean(values))
        summary.append(entry)
    return summary
