"""The QA gate: figures measured on every enhanced series before anything is sent.

A model's output is compared with its own input, since no reference exists in
production. Each check yields a figure and passes when the figure is within its configured
limit (a limit of None records the figure without judging it):

- ``non_finite``: NaN or infinite output values (limit 0, always judged);
- ``geometry``: the output grid and the derived instances' geometry against the source
  (slice count, matrix, spacing, positions, orientation, frame of reference);
- ``range_excess``: how far the output leaves the input's value range (overshoot, rims;
  for CT, values in air at or below -1000 HU do not count);
- ``mean_shift``: the mean of output - input in large uniform regions (a HU bias);
- ``residual_noise_ratio``: σ of the residual (input - output) in flat regions against the
  series' own noise σ, estimated blind from the input (removed or added texture beyond
  the noise);
- ``edge_correlation``: correlation of the residual's magnitude with the source's edges
  (structure removed or invented along edges);
- ``sample_spread``: for a stochastic model (a diffusion sampler), the per-pixel spread
  across samples drawn with other seeds (what the model is unsure of), 99th percentile
  over the body of the centre slice.

Super-resolution outputs are compared on the input's grid: the output is averaged over
each ``scale`` x ``scale`` block first. For CT the shift and range figures are in HU; for
other modalities they are in units of the series' noise σ. The statistical checks run on
up to ``max_slices`` evenly spaced slices; the non-finite and range checks on every voxel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from pacs_node.settings import QALimits

Verdict = Literal["pass", "fail"]

FLAT_WINDOW_PX = 9
REPORT_VERSION = 1
# CT values at or below this are air: an output a few HU below the input's clipped air
# (-1000 or -1024) next to the skin is not a range excess.
AIR_HU = -1000.0


def flat_noise_sigma(image: np.ndarray, mask: np.ndarray, window: int = FLAT_WINDOW_PX) -> float:
    """Noise σ of an image without a reference, from its flat regions.

    The standard deviation (ddof 1) in every ``window`` x ``window`` square lying wholly
    inside ``mask``; the median over those squares. Squares over an edge have a large σ and
    squares in flat tissue the noise's, so the median follows the flat majority. The
    square's own mean is removed, so noise power at wavelengths beyond the window is
    missed: a slight underestimate for coarse noise. If no square fits, the σ over
    ``mask`` itself; NaN for an empty mask.
    """
    data = image.astype(np.float64)
    if not mask.any():
        return math.nan
    inside = ndimage.binary_erosion(mask, np.ones((window, window), bool))
    if not inside.any():
        return float(np.std(data[mask], ddof=1)) if mask.sum() > 1 else math.nan
    mean = ndimage.uniform_filter(data, window)
    square = ndimage.uniform_filter(data * data, window)
    n = window * window
    local = np.sqrt(np.maximum(square - mean * mean, 0.0) * n / (n - 1))
    return float(np.median(local[inside]))


def edge_correlation(
    image: np.ndarray, output: np.ndarray, region: np.ndarray, floor: float | None = -1024.0
) -> float:
    """Pearson correlation, over ``region``, of the smoothed residual magnitude
    ``G2 * |output - image|`` and the edge map ``|grad(G1 * image)|`` (Gaussian σ in px;
    the image clipped below at ``floor``, the air of CT): near 0 when a method removes
    noise alone, high when its residual follows the edges (it removes, blurs or invents
    structure). NaN for a zero residual or an empty region."""
    data = image.astype(np.float64)
    clipped = np.maximum(data, floor) if floor is not None else data
    residual = ndimage.gaussian_filter(np.abs(output.astype(np.float64) - data), 2.0)
    edges = ndimage.gaussian_gradient_magnitude(clipped, 1.0)
    a, b = residual[region], edges[region]
    if a.size < 2 or a.std() == 0.0 or b.std() == 0.0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


@dataclass(frozen=True)
class Gate:
    """How the gate measures one preset's output: its limits and the slices it samples."""

    limits: QALimits
    max_slices: int = 16
    diffusion_samples: int = 2


@dataclass(frozen=True)
class Check:
    """One check's figure, its limit, and whether it passed (None: nothing to judge)."""

    name: str
    value: float | None
    limit: float | None
    passed: bool
    detail: str = ""

    @property
    def failed(self) -> bool:
        """True when the figure is outside its limit."""
        return not self.passed


@dataclass(frozen=True)
class QAReport:
    """The gate's figures for one enhanced series and its verdict."""

    checks: list[Check]
    noise_sigma: float | None
    unit: str
    slices_measured: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        """``fail`` when any check failed."""
        return "fail" if any(c.failed for c in self.checks) else "pass"

    @property
    def usable(self) -> bool:
        """False when the output cannot be written at all (wrong shape, NaN or Inf)."""
        return not (self.check("non_finite").failed or self.check("geometry").failed)

    @property
    def failures(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.failed]

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        return next(c for c in self.checks if c.name == name)

    def summary(self) -> str:
        """One line for the audit trail: the verdict and every failed check with its figure."""
        if self.verdict == "pass":
            return "QA passed: " + ", ".join(_figure(c) for c in self.checks if c.value is not None)
        return "QA failed: " + "; ".join(_figure(c) + (f" ({c.detail})" if c.detail else "")
                                         for c in self.failures)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The report as stored in the job row and shown by the API and CLI."""
        return {
            "version": REPORT_VERSION,
            "verdict": self.verdict,
            "unit": self.unit,
            "noise_sigma": _number(self.noise_sigma),
            "slices_measured": self.slices_measured,
            "checks": {
                c.name: {
                    "value": _number(c.value),
                    "limit": c.limit,
                    "passed": c.passed,
                    "detail": c.detail,
                }
                for c in self.checks
            },
            **self.extra,
        }


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _figure(check: Check) -> str:
    if check.value is None:
        return f"{check.name} not measured"
    limit = "" if check.limit is None else f" (limit {check.limit:g})"
    return f"{check.name} {check.value:.3g}{limit}"


def _judge(
    name: str, value: float | None, limit: float | None, detail: str = "", two_sided: bool = False
) -> Check:
    """A check on ``value <= limit`` (``|value| <= limit`` when ``two_sided``); an
    unmeasurable figure (None, NaN) passes."""
    if value is None or not math.isfinite(value):
        return Check(name, None, limit, True, detail or "nothing to measure")
    size = abs(value) if two_sided else value
    return Check(name, value, limit, limit is None or size <= limit, detail)


def _on_input_grid(output: np.ndarray, scale: int) -> np.ndarray:
    """The output averaged over each ``scale`` x ``scale`` block (the input's grid)."""
    if scale == 1:
        return output
    depth, rows, columns = output.shape
    blocks = output.reshape(depth, rows // scale, scale, columns // scale, scale)
    return blocks.mean(axis=(2, 4))


def _regions(image: np.ndarray, ct: bool) -> tuple[np.ndarray, np.ndarray]:
    """(flat region, body) of one input slice: for CT soft tissue (|HU| < 150) inside a
    body (HU > -500); otherwise the foreground above 10 % of the 2-98 % range."""
    if ct:
        body = image > -500.0
        flat = ndimage.binary_erosion(body, iterations=3) & (np.abs(image) < 150.0)
    else:
        low, high = np.percentile(image, [2.0, 98.0])
        body = image > low + 0.1 * (high - low)
        flat = ndimage.binary_erosion(body, iterations=3)
    return flat, ndimage.binary_dilation(body, iterations=3)


def _uniform(image: np.ndarray, flat: np.ndarray, sigma: float) -> np.ndarray:
    """Large uniform regions: flat pixels 7 px from the region's edge whose 9 x 9
    neighbourhood's σ is no more than 1.5 times the noise σ."""
    inner = ndimage.binary_erosion(flat, iterations=7)
    if not inner.any():
        return inner
    data = image.astype(np.float64)
    mean = ndimage.uniform_filter(data, FLAT_WINDOW_PX)
    square = ndimage.uniform_filter(data * data, FLAT_WINDOW_PX)
    local = np.sqrt(np.maximum(square - mean * mean, 0.0))
    return inner & (local <= 1.5 * sigma)


def measure(
    source: np.ndarray,
    output: np.ndarray,
    *,
    modality: str,
    scale: int = 1,
    limits: QALimits | None = None,
    max_slices: int = 16,
    geometry_problems: Sequence[str] = (),
    sample_spread: Callable[[], np.ndarray] | None = None,
    sample_spread_detail: str = "a deterministic model",
) -> QAReport:
    """Measure ``output`` (depth, rows x scale, columns x scale) against ``source``
    (depth, rows, columns), both in modality units (HU for CT).

    ``geometry_problems`` are what the caller found wrong with the derived instances'
    geometry; a wrong output shape is found here. Either fails the geometry check, and a
    wrong shape or a non-finite value leaves the statistical checks unmeasured.

    ``sample_spread`` (stochastic models) gives the per-pixel spread across samples of the
    centre slice, on the output grid; its 99th percentile over the body is judged.
    """
    limits = limits or QALimits()
    ct = modality.upper() == "CT"
    unit = "HU" if ct else "noise σ"
    problems = list(geometry_problems)
    depth, rows, columns = source.shape
    expected = (depth, rows * scale, columns * scale)
    if output.shape != expected:
        problems.append(f"output shape {output.shape}, expected {expected}")
    bad = int(np.size(output) - np.count_nonzero(np.isfinite(output))) if not problems else 0
    if problems or bad:
        return unusable_report(problems, bad, unit)
    checks = [Check("geometry", 0.0, 0.0, True), Check("non_finite", 0.0, 0.0, True)]

    src = source.astype(np.float32, copy=False)
    low_res = _on_input_grid(output.astype(np.float32, copy=False), scale)
    picked = np.unique(np.linspace(0, depth - 1, min(depth, max_slices)).round().astype(int))
    sigmas, residual_sigmas, shifts, weights, correlations = [], [], [], [], []
    for index in picked:
        image, out = src[index], low_res[index]
        flat, body = _regions(image, ct)
        sigma = flat_noise_sigma(image, flat)
        if not math.isfinite(sigma):
            continue
        sigmas.append(sigma)
        residual_sigmas.append(flat_noise_sigma(image - out, flat))
        uniform = _uniform(image, flat, sigma)
        if uniform.any():
            shifts.append(float(np.mean(out[uniform].astype(np.float64) - image[uniform])))
            weights.append(int(uniform.sum()))
        correlations.append(edge_correlation(image, out, body, -1024.0 if ct else None))

    noise = float(np.median(sigmas)) if sigmas else None
    low, high = (float(v) for v in np.percentile(src[picked], [2.0, 98.0]))
    floor = limits.noise_floor_hu if ct else limits.noise_floor_fraction * max(high - low, 1e-12)
    unit_sigma = max(noise or 0.0, floor)  # the unit of non-CT shift and range figures

    top, bottom = float(output.max()), float(output.min())
    lowest = float(src.min())
    if ct:  # air: values at or below AIR_HU do not count (scanners clip air at -1000/-1024)
        bottom, lowest = max(bottom, AIR_HU), max(lowest, AIR_HU)
    excess = max(0.0, top - float(src.max()), lowest - bottom)
    if ct:
        checks.append(_judge("range_excess", excess, limits.range_excess_hu))
    else:
        checks.append(_judge("range_excess", excess / unit_sigma, limits.range_excess_sigma))

    shift = float(np.average(shifts, weights=weights)) if shifts else None
    detail = "" if shifts else "no large uniform region"
    if ct:
        checks.append(_judge("mean_shift", shift, limits.mean_shift_hu, detail, two_sided=True))
    else:
        value = None if shift is None else shift / unit_sigma
        checks.append(_judge("mean_shift", value, limits.mean_shift_sigma, detail, two_sided=True))

    ratio = float(np.median(residual_sigmas)) / max(noise, floor) if noise is not None else None
    checks.append(_judge("residual_noise_ratio", ratio, limits.residual_noise_ratio))
    finite = [c for c in correlations if math.isfinite(c)]
    correlation = float(np.mean(finite)) if finite else None
    checks.append(_judge("edge_correlation", correlation, limits.edge_correlation,
                         "" if finite else "no residual"))  # fmt: skip
    if sample_spread is None:
        checks.append(Check("sample_spread", None, None, True, sample_spread_detail))
    else:
        centre = src[depth // 2]
        body = _regions(centre, ct)[1]
        if scale > 1:
            body = np.repeat(np.repeat(body, scale, axis=0), scale, axis=1)
        spread = sample_spread()
        value = float(np.percentile(spread[body], 99.0)) if body.any() else None
        if ct:
            checks.append(_judge("sample_spread", value, limits.sample_spread_hu))
        else:
            value = None if value is None else value / unit_sigma
            checks.append(_judge("sample_spread", value, limits.sample_spread_sigma))
    return QAReport(checks, noise, unit, len(sigmas))


def unusable_report(problems: Sequence[str], non_finite: int, unit: str) -> QAReport:
    """The report on an output that cannot be written: its geometry ``problems`` and
    ``non_finite`` values; the statistical checks are not measured."""
    checks = [
        Check("geometry", float(len(problems)), 0.0, not problems, "; ".join(problems)),
        Check("non_finite", float(non_finite), 0.0, non_finite == 0,
              f"{non_finite} NaN or infinite values" if non_finite else ""),
    ]  # fmt: skip
    for name in ("range_excess", "mean_shift", "residual_noise_ratio", "edge_correlation",
                 "sample_spread"):  # fmt: skip
        checks.append(Check(name, None, None, True, "not measured: unusable output"))
    return QAReport(checks, None, unit, 0)


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.size == count else None


def geometry_problems(
    sources: Sequence[Dataset], derived: Sequence[Dataset], scale: int
) -> list[str]:
    """What is wrong with single-frame derived instances' geometry against their sources
    (matched by order): count, frame of reference, orientation, pixel spacing divided by
    ``scale``, and position (the first voxel's centre moves by less than a source pixel)."""
    problems: list[str] = []
    if len(sources) != len(derived):
        return [f"{len(derived)} derived instances for {len(sources)} sources"]
    for index, (src, out) in enumerate(zip(sources, derived, strict=True)):
        where = f"instance {index + 1}"
        if src.get("FrameOfReferenceUID") != out.get("FrameOfReferenceUID"):
            problems.append(f"{where}: frame of reference changed")
        orient_in = _floats(src.get("ImageOrientationPatient", ()), 6)
        orient_out = _floats(out.get("ImageOrientationPatient", ()), 6)
        if orient_in is not None and (
            orient_out is None or not np.allclose(orient_in, orient_out, atol=1e-4)
        ):
            problems.append(f"{where}: orientation changed")
        spacing_in = _floats(src.get("PixelSpacing", ()), 2)
        spacing_out = _floats(out.get("PixelSpacing", ()), 2)
        if spacing_in is not None and (spacing_out is None
                                       or not np.allclose(spacing_in / scale, spacing_out,
                                                          rtol=1e-4)):  # fmt: skip
            problems.append(f"{where}: pixel spacing {spacing_out} for {spacing_in} / {scale}")
        position_in = _floats(src.get("ImagePositionPatient", ()), 3)
        position_out = _floats(out.get("ImagePositionPatient", ()), 3)
        if (
            position_in is not None
            and spacing_in is not None
            and (
                position_out is None
                or np.linalg.norm(position_in - position_out) >= float(spacing_in.max())
            )
        ):
            problems.append(f"{where}: position moved")
        if (
            int(out.get("Rows", 0)) != int(src.get("Rows", 0)) * scale
            or int(out.get("Columns", 0)) != int(src.get("Columns", 0)) * scale
        ):
            problems.append(f"{where}: matrix {out.get('Rows')}x{out.get('Columns')}")
        if len(problems) >= 5:
            problems.append("further instances not checked")
            break
    return problems
