"""`pacs-lab evaluate-ct`: blind CT denoisers on held-out patients at three noise levels."""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage, stats

from lab.noise import TESTING, NoiseRecipe, simulate, soft_tissue_mask
from models.base import Enhancer
from models.evaluate import roi_bias
from models.metrics import (
    FULL_WINDOW,
    SOFT_TISSUE_WINDOW,
    cnr,
    gaussian_baseline,
    nlm_baseline,
    pooled_noise_sigma_hu,
    psnr,
)
from models.phantoms import Disk, Phantom, low_contrast_phantom
from models.simulation import noise_power_spectrum, nps_mean_frequency
from pacs_node.qa import edge_correlation, flat_noise_sigma

# A method maps a noisy slice (y, x) in HU and the noise σ in HU (the true σ of the added
# noise on slices and phantoms, an estimate on real low-dose slices; only NLM and BM3D use
# it, models are blind) to the denoised slice.
Method = Callable[[np.ndarray, float], np.ndarray]

LEVELS_HU: tuple[float, ...] = (20.0, 40.0, 70.0)
ALL_GROUPS = "all"
PHANTOM_SEED = 9000  # evaluation phantoms; training phantoms use 5000+
NPS_ROI_PX = 32
SLICE_METRICS: tuple[str, ...] = (
    "psnr_full_db",
    "psnr_soft_tissue_db",
    "ssim_full",
    "noise_sigma_hu",
    "noise_reduction_pct",
    "bias_hu",
    "nps_mean_freq_shift_pct",
    "seconds",
)
PAIRED_METRICS: tuple[str, ...] = ("psnr_full_db", "psnr_soft_tissue_db", "ssim_full")


@dataclass(frozen=True)
class Reference:
    """A slice to evaluate: name, vendor/kernel group, HU (padding below -1024 kept as
    stored) and pixel spacing in mm."""

    name: str
    group: str
    hu: np.ndarray
    spacing_mm: float


def derived_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed from the global seed and ``parts`` (e.g. slice name and level)."""
    text = ":".join(str(part) for part in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def scan_field(image_hu: np.ndarray) -> np.ndarray:
    """Pixels of the scan field: finite and at or above -1024 HU (below is padding)."""
    return np.isfinite(image_hu) & (image_hu >= -1024.0)


def keep_padding(method: Method) -> Method:
    """Run ``method`` on the image clipped at -1024 HU and give pixels below -1024 back as
    they were sent, as the inference engine does for networks (padding stays padding)."""

    def run(image: np.ndarray, sigma_hu: float) -> np.ndarray:
        out = np.asarray(method(np.maximum(image, np.float32(-1024.0)), sigma_hu), np.float32)
        outside = image < -1024.0
        out[outside] = image[outside]
        return out

    return run


def bm3d_available() -> bool:
    """Whether the ``bm3d`` package (the ``eval`` extra) can be imported."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def bm3d_baseline(image_hu: np.ndarray, sigma_hu: float) -> np.ndarray:
    """BM3D given the true σ, on the image mapped to [0, 1] over the full window.

    Parameters
    ----------
    image_hu : np.ndarray
        Noisy slice (y, x) in HU; values are clipped to (-1024, 3072) first.
    sigma_hu : float
        Noise standard deviation in HU; BM3D gets ``sigma_hu / 4096``.

    Returns
    -------
    np.ndarray
        Denoised slice, float32 HU.
    """
    import bm3d

    if sigma_hu <= 0:
        raise ValueError(f"sigma_hu must be positive, got {sigma_hu}")
    low, high = FULL_WINDOW
    scaled = (np.clip(image_hu.astype(np.float64), low, high) - low) / (high - low)
    out = np.asarray(bm3d.bm3d(scaled, sigma_psd=sigma_hu / (high - low)), dtype=np.float64)
    return (out * (high - low) + low).astype(np.float32)


def baseline_methods(with_bm3d: bool | None = None) -> dict[str, Method]:
    """``input``, ``gaussian`` (σ 1 px), ``nlm`` and ``bm3d`` (given σ), padding kept.

    ``with_bm3d`` None includes BM3D where the package is installed.
    """
    methods: dict[str, Method] = {
        "input": lambda image, sigma: image,
        "gaussian": keep_padding(lambda image, sigma: gaussian_baseline(image, 1.0)),
        "nlm": keep_padding(nlm_baseline),
    }
    if bm3d_available() if with_bm3d is None else with_bm3d:
        methods["bm3d"] = keep_padding(bm3d_baseline)
    return methods


def enhancer_method(enhancer: Enhancer) -> Method:
    """A blind method from a node enhancer, run on a one-slice volume (1, y, x)."""

    def run(image: np.ndarray, _sigma_hu: float) -> np.ndarray:
        out, _ = enhancer(image[None].astype(np.float32), (1.0, 1.0, 1.0))
        return np.asarray(out[0], dtype=np.float32)

    return run


def ssim_in_field(
    estimate: np.ndarray, reference: np.ndarray, window: tuple[float, float], mask: np.ndarray
) -> float:
    """SSIM as ``models.metrics.ssim`` (clip to ``window``, 7x7, skimage defaults) inside
    ``mask`` only: outside it the estimate is replaced by the reference (so what a method
    writes into padding does not count) and the SSIM map is averaged over ``mask``."""
    from skimage.metrics import structural_similarity

    low, high = window
    b = np.clip(reference.astype(np.float64), low, high) - low
    a = np.where(mask, np.clip(estimate.astype(np.float64), low, high) - low, b)
    _, ssim_map = structural_similarity(a, b, data_range=high - low, full=True)
    return float(np.mean(ssim_map[mask]))


def _nps_mean_frequency(noise: np.ndarray, spacing_mm: float, mask: np.ndarray) -> float:
    """NPS mean frequency (cycles/mm) over 32-px ROIs in ``mask``; NaN if none fits or the
    noise has no power."""
    try:
        freq, nps = noise_power_spectrum(noise, NPS_ROI_PX, spacing_mm, mask)
        return nps_mean_frequency(freq, nps)
    except ValueError:
        return math.nan


def slice_metrics(
    reference: np.ndarray,
    noisy: np.ndarray,
    output: np.ndarray,
    spacing_mm: float,
    input_nps_frequency: float | None = None,
) -> dict[str, float]:
    """Metrics of one output against its reference, inside the scan field.

    Parameters
    ----------
    reference : np.ndarray
        Reference slice in HU (padding below -1024 excluded from every metric).
    noisy : np.ndarray
        The method's input; (noisy - reference) sets σ_in and the input NPS.
    output : np.ndarray
        The method's output in HU.
    spacing_mm : float
        Pixel spacing.
    input_nps_frequency : float or None
        The input noise's NPS mean frequency, if already known.

    Returns
    -------
    dict
        PSNR (full and soft-tissue windows) and SSIM (full window) in the scan field;
        σ of (output - reference) in ``soft_tissue_mask(reference)`` (ddof 0), its
        reduction in % of the input's, the mean of (output - reference) there (HU bias),
        and the relative shift (%) of the residual's NPS mean frequency from the input
        noise's (NaN when no 32-px ROI fits or the residual is 0).
    """
    in_field = scan_field(reference)
    soft = soft_tissue_mask(reference)
    residual = output.astype(np.float64) - reference
    noise = noisy.astype(np.float64) - reference
    sigma_in = float(np.std(noise[soft]))
    sigma_out = float(np.std(residual[soft]))
    f_in = (
        _nps_mean_frequency(noise, spacing_mm, soft)
        if input_nps_frequency is None
        else input_nps_frequency
    )
    f_out = _nps_mean_frequency(residual, spacing_mm, soft)
    return {
        "psnr_full_db": psnr(output[in_field], reference[in_field], FULL_WINDOW),
        "psnr_soft_tissue_db": psnr(output[in_field], reference[in_field], SOFT_TISSUE_WINDOW),
        "ssim_full": ssim_in_field(output, reference, FULL_WINDOW, in_field),
        "input_sigma_hu": sigma_in,
        "noise_sigma_hu": sigma_out,
        "noise_reduction_pct": 100.0 * (1.0 - sigma_out / sigma_in) if sigma_in else math.nan,
        "bias_hu": float(np.mean(residual[soft])),
        "nps_mean_freq_shift_pct": 100.0 * (f_out / f_in - 1.0),
    }


class Memoised:
    """A deterministic method whose outputs are kept in ``cache_dir`` with the seconds
    they took, keyed by the method's name, σ and the input's bytes: a later run (another
    model on the same noisy slices) reuses them and reports the original timing."""

    def __init__(self, name: str, method: Method, cache_dir: Path) -> None:
        self.name, self.method, self.cache_dir = name, method, cache_dir

    def _path(self, image: np.ndarray, sigma: float) -> Path:
        digest = hashlib.sha256(f"{self.name}:{sigma!r}:{image.shape}".encode())
        digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
        return self.cache_dir / f"{self.name}-{digest.hexdigest()[:24]}.npz"

    def run(self, image: np.ndarray, sigma: float) -> tuple[np.ndarray, float]:
        """The output and the seconds it took (when first computed)."""
        path = self._path(image, sigma)
        if path.is_file():
            with np.load(path) as stored:
                return stored["out"], float(stored["seconds"])
        started = time.perf_counter()
        out = np.asarray(self.method(image, sigma), dtype=np.float32)
        seconds = time.perf_counter() - started
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(partial, out=out, seconds=np.float64(seconds))
        partial.replace(path)
        return out, seconds

    def __call__(self, image: np.ndarray, sigma: float) -> np.ndarray:
        return self.run(image, sigma)[0]


def _simulate(
    cache_dir: Path | None,
    image: np.ndarray,
    spacing_mm: float,
    recipe: NoiseRecipe,
    sigmas: list[float],
    seed: int,
    device: str,
) -> np.ndarray:
    """:func:`lab.noise.simulate`'s noise fields, kept in ``cache_dir`` when given."""
    if cache_dir is None:
        return simulate(image, spacing_mm, recipe, sigmas, seed, device)[0]
    digest = hashlib.sha256(repr((asdict(recipe), spacing_mm, sigmas, seed, device)).encode())
    digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    path = cache_dir / f"noise-{digest.hexdigest()[:24]}.npy"
    if path.is_file():
        return np.load(path)
    fields = simulate(image, spacing_mm, recipe, sigmas, seed, device)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, fields)
    partial.replace(path)
    return fields


def _run(name: str, method: Method, image: np.ndarray, sigma: float) -> tuple[np.ndarray, float]:
    if isinstance(method, Memoised):
        out, seconds = method.run(image, sigma)
        return out, seconds
    started = time.perf_counter()
    out = np.asarray(method(image, sigma), dtype=np.float32)
    seconds = time.perf_counter() - started
    if out.shape != image.shape:
        raise ValueError(f"method {name!r} returned shape {out.shape}, expected {image.shape}")
    return out, seconds


def evaluate_slices(
    references: Sequence[Reference],
    methods: Mapping[str, Method],
    levels: Sequence[float] = LEVELS_HU,
    recipe: NoiseRecipe = TESTING,
    seed: int = 0,
    keep: Collection[str] = (),
    log: Callable[[str], None] = print,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[tuple[str, float, str], np.ndarray]]:
    """Add noise of ``recipe`` at each level to each reference and run every method.

    The noise of a slice's levels is drawn in one simulation (one projection) with seed
    ``derived_seed(seed, name)``, so a run with fewer slices draws the same noise for those
    it has; it is added only inside the scan field (padding keeps its value).

    Parameters
    ----------
    references : sequence of Reference
        The reference slices (square, HU).
    methods : mapping of str to Method
        Name to method; each gets the noisy slice and the level (the true σ).
    levels : sequence of float
        Added noise σ in soft tissue, HU.
    recipe : NoiseRecipe
        How the noise is made (:data:`lab.noise.TESTING` for the report).
    seed : int
        The global seed.
    keep : collection of str
        Names of the slices whose outputs are returned (for figures).
    log : callable
        Progress messages.
    device : str
        Where the fan-beam simulation runs (``cpu`` or ``cuda``).
    cache_dir : Path, optional
        Keeps the simulated noise between runs.

    Returns
    -------
    rows
        One dict per (slice, level, method): ``slice``, ``group``, ``level_hu``, ``method``,
        :func:`slice_metrics` and ``seconds`` (the method's run time on the slice).
    outputs
        Outputs of the slices named in ``keep``, by (name, level, method).
    """
    rows: list[dict[str, Any]] = []
    outputs: dict[tuple[str, float, str], np.ndarray] = {}
    for index, ref in enumerate(references):
        reference = ref.hu.astype(np.float32)
        in_field = scan_field(reference)
        soft = soft_tissue_mask(reference)
        wanted = [float(v) for v in levels]
        fields = _simulate(cache_dir, reference, ref.spacing_mm, recipe, wanted,
                           derived_seed(seed, ref.name), device)  # fmt: skip
        for level, drawn in zip(levels, fields, strict=True):
            noise = np.where(in_field, drawn, np.float32(0.0))
            noisy = (reference + noise).astype(np.float32)
            f_in = _nps_mean_frequency(noisy.astype(np.float64) - reference, ref.spacing_mm, soft)
            for name, method in methods.items():
                out, seconds = _run(name, method, noisy, float(level))
                row: dict[str, Any] = {"slice": ref.name, "group": ref.group,
                                       "level_hu": float(level), "method": name}  # fmt: skip
                row.update(slice_metrics(reference, noisy, out, ref.spacing_mm, f_in))
                row["seconds"] = seconds
                rows.append(row)
                if ref.name in keep:
                    outputs[(ref.name, float(level), name)] = out
        log(f"slice {index + 1}/{len(references)} ({ref.name}) done")
    return rows, outputs


def t_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval of the mean.

    Parameters
    ----------
    values : iterable of float
        Samples; NaN values are left out.
    confidence : float
        Coverage, 0.95 for a 95 % interval.

    Returns
    -------
    tuple of float
        (mean, half-width); the half-width is NaN for a single value, both are NaN for none.
    """
    data = np.array([v for v in values if np.isfinite(v)], dtype=np.float64)
    if data.size == 0:
        return math.nan, math.nan
    mean = float(data.mean())
    if data.size == 1:
        return mean, math.nan
    sem = float(data.std(ddof=1)) / math.sqrt(data.size)
    return mean, float(stats.t.ppf(0.5 + confidence / 2.0, data.size - 1)) * sem


def aggregate(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = SLICE_METRICS
) -> list[dict[str, Any]]:
    """Mean and 95 % t-interval over slices of each metric, per level × group × method and
    per level × method over all groups (group ``"all"``).

    Returns
    -------
    list of dict
        ``level_hu``, ``group``, ``method``, ``metric``, ``n`` (finite values), ``mean``,
        ``half_width``, ``ci_low``, ``ci_high`` (NaN bounds for n = 1).
    """
    cells: dict[tuple[float, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        for group in (ALL_GROUPS, row["group"]):
            cells.setdefault((float(row["level_hu"]), group, row["method"]), []).append(row)
    out = []
    for (level, group, method), members in cells.items():
        for metric in metrics:
            values = [float(m[metric]) for m in members if metric in m]
            mean, half = t_interval(values)
            out.append({"level_hu": level, "group": group, "method": method, "metric": metric,
                        "n": int(np.isfinite(values).sum()), "mean": mean, "half_width": half,
                        "ci_low": mean - half, "ci_high": mean + half})  # fmt: skip
    return out


def paired_differences(
    rows: Sequence[Mapping[str, Any]],
    method: str,
    baseline: str,
    metrics: Sequence[str] = PAIRED_METRICS,
) -> list[dict[str, Any]]:
    """Per (slice, level), ``method`` minus ``baseline`` for each metric, as rows whose
    method is ``"<method> - <baseline>"`` (aggregate them with :func:`aggregate`)."""
    base = {(r["slice"], r["level_hu"]): r for r in rows if r["method"] == baseline}
    out = []
    for row in rows:
        other = base.get((row["slice"], row["level_hu"]))
        if row["method"] != method or other is None:
            continue
        diff: dict[str, Any] = {key: row[key] for key in ("slice", "group", "level_hu")}
        diff["method"] = f"{method} - {baseline}"
        diff.update({m: float(row[m]) - float(other[m]) for m in metrics})
        out.append(diff)
    return out


def evaluation_phantoms(count: int, size: int = 512, base_spacing_mm: float = 0.7) -> list[Phantom]:
    """``count`` low-contrast phantoms of seeds 9000+, each different: own layout and
    texture, spacing ``base_spacing_mm`` + 0-0.2 mm, background 0-40 HU. Smaller ``size``
    needs a larger spacing (about 2.2 mm at 192 px) for the module to fit."""
    return [
        low_contrast_phantom(
            size, base_spacing_mm + 0.04 * (i % 6), PHANTOM_SEED + i, background_hu=10.0 * (i % 5)
        )
        for i in range(count)
    ]


def _mean_cnr(image: np.ndarray, disks: Sequence[Disk]) -> float:
    return float(np.mean([cnr(image, d.mask, d.background_mask) for d in disks]))


def evaluate_phantoms(
    phantoms: Sequence[Phantom],
    methods: Mapping[str, Method],
    levels: Sequence[float] = LEVELS_HU,
    recipe: NoiseRecipe = TESTING,
    seed: int = 0,
    draws: int = 4,
    single_draw: Collection[str] = ("bm3d",),
    log: Callable[[str], None] = print,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Exact-truth phantoms with ``draws`` independent noise draws per level.

    Per (phantom, level, method): the HU bias per uniform ROI averaged over the draws
    (:func:`models.evaluate.roi_bias`; the worst ROI's signed value, |value| and standard
    error), the low-contrast CNR ratio (mean CNR over the disks of the output / of the
    input, averaged over the draws), the noise reduction in the uniform ROIs (draw 0) and
    seconds per run. Methods in ``single_draw`` (slow ones) run on draw 0 only.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    rows = []
    for index, phantom in enumerate(phantoms):
        truth, rois = phantom.image.astype(np.float32), phantom.uniform_rois
        spacing = phantom.pixel_spacing_mm
        wanted = [float(level) for level in levels for _ in range(draws)]
        fields = _simulate(cache_dir, truth, spacing, recipe, wanted,
                           derived_seed(seed, "phantom", index), device)  # fmt: skip
        for position, level in enumerate(levels):
            noise = fields[position * draws : (position + 1) * draws]
            noisy = (truth[None] + noise).astype(np.float32)
            cnr_in = [_mean_cnr(image, phantom.disks) for image in noisy]
            for name, method in methods.items():
                runs = [
                    _run(name, method, image, float(level))
                    for image in noisy[: 1 if name in single_draw else draws]
                ]
                outs = [out for out, _ in runs]
                bias, error = roi_bias(outs, truth, rois)
                worst = int(np.argmax(np.abs(bias)))
                ratios = [
                    _mean_cnr(o, phantom.disks) / c for o, c in zip(outs, cnr_in, strict=False)
                ]
                sigma_in = pooled_noise_sigma_hu(noisy[0], truth, rois)
                sigma_out = pooled_noise_sigma_hu(outs[0], truth, rois)
                rows.append({"phantom": phantom.name, "level_hu": float(level), "method": name,
                             "draws": len(outs), "bias_hu": float(bias[worst]),
                             "abs_bias_hu": float(abs(bias[worst])),
                             "bias_se_hu": float(error[worst]), "cnr_ratio": float(np.mean(ratios)),
                             "noise_reduction_pct": 100.0 * (1.0 - sigma_out / sigma_in),
                             "seconds": float(np.mean([s for _, s in runs]))})  # fmt: skip
        log(f"phantom {index + 1}/{len(phantoms)} ({phantom.name}) done")
    return rows


def aggregate_phantoms(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per level × method: the worst |bias| over ROIs and phantoms (with its signed value,
    standard error and phantom), and mean CNR ratio and noise reduction with 95 % CIs."""
    cells: dict[tuple[float, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        cells.setdefault((float(row["level_hu"]), row["method"]), []).append(row)
    out = []
    for (level, method), members in cells.items():
        worst = max(members, key=lambda r: float(r["abs_bias_hu"]))
        entry: dict[str, Any] = {
            "level_hu": level, "method": method, "phantoms": len(members),
            "draws": int(worst["draws"]), "worst_abs_bias_hu": float(worst["abs_bias_hu"]),
            "worst_bias_hu": float(worst["bias_hu"]),
            "worst_bias_se_hu": float(worst["bias_se_hu"]), "worst_bias_phantom": worst["phantom"],
        }  # fmt: skip
        for metric in ("cnr_ratio", "noise_reduction_pct", "seconds"):
            mean, half = t_interval(float(m[metric]) for m in members)
            entry[metric] = mean
            entry[f"{metric}_half_width"] = half
        out.append(entry)
    return out


def evaluate_low_dose(
    slices: Sequence[Reference],
    methods: Mapping[str, Method],
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """No-reference figures on real low-dose slices (``Reference.hu`` is the input).

    Every method gets the blind estimate ``flat_noise_sigma`` of the input's σ in its soft
    tissue (only NLM uses it). Per (slice, method): σ before and after (``flat_noise_sigma``
    in ``soft_tissue_mask``) and its reduction in %, the bias of the ROI mean (mean of
    output - input over the soft-tissue mask), :func:`edge_correlation` over the body
    (HU > -500, dilated 3 px) and seconds. Returns the rows and every output.
    """
    rows, outputs = [], {}
    for ref in slices:
        image = ref.hu.astype(np.float32)
        soft = soft_tissue_mask(image)
        body = ndimage.binary_dilation(image > -500, iterations=3) & scan_field(image)
        sigma = flat_noise_sigma(image, soft)
        for name, method in methods.items():
            out, seconds = _run(name, method, image, sigma)
            after = flat_noise_sigma(out, soft)
            rows.append({"slice": ref.name, "group": ref.group, "method": name,
                         "estimated_sigma_hu": sigma, "sigma_after_hu": after,
                         "noise_reduction_pct": 100.0 * (1.0 - after / sigma),
                         "bias_hu": float(np.mean((out.astype(np.float64) - image)[soft])),
                         "edge_correlation": edge_correlation(image, out, body),
                         "seconds": seconds})  # fmt: skip
            outputs[(ref.name, name)] = out
        log(f"low-dose slice {ref.name} done")
    return rows, outputs


@dataclass(frozen=True)
class CtEvalConfig:
    """What ``pacs-lab evaluate-ct`` runs; every field is written into the report."""

    data_dir: Path = Path("../shared/data")
    split: Literal["test", "validation"] = "test"
    levels_hu: tuple[float, ...] = LEVELS_HU
    phantoms: int = 6
    bias_draws: int = 4
    max_slices_per_collection: int | None = None
    seed: int = 0
    bar_method: str | None = None  # None: the first model

    def __post_init__(self) -> None:
        if self.split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {self.split!r}")
        if not self.levels_hu or any(not level > 0 for level in self.levels_hu):
            raise ValueError(f"levels_hu must be positive noise σ values, got {self.levels_hu}")
        if self.phantoms < 0:
            raise ValueError(f"phantoms must be >= 0, got {self.phantoms}")
        if self.bias_draws < 1:
            raise ValueError(f"bias_draws must be >= 1, got {self.bias_draws}")
        if self.max_slices_per_collection is not None and self.max_slices_per_collection < 1:
            raise ValueError(
                f"max_slices_per_collection must be >= 1, got {self.max_slices_per_collection}"
            )


@dataclass
class CtEvalResult:
    """Everything a run measured, for :mod:`lab.ct_report`."""

    config: CtEvalConfig
    recipe: NoiseRecipe
    models: list[str]
    bar_method: str | None
    bm3d: bool
    references: list[Reference]
    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    paired: list[dict[str, Any]]
    phantom_rows: list[dict[str, Any]]
    phantoms: list[dict[str, Any]]
    low_dose: list[Reference]
    low_dose_rows: list[dict[str, Any]]
    outputs: dict[tuple[str, float, str], np.ndarray]
    low_dose_outputs: dict[tuple[str, str], np.ndarray]
    timings_s: dict[str, float]
    command: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)


def representatives(references: Sequence[Reference]) -> list[str]:
    """The middle slice (in order) of each group: the one whose figures are drawn."""
    by_group: dict[str, list[str]] = {}
    for ref in references:
        by_group.setdefault(ref.group, []).append(ref.name)
    return [names[len(names) // 2] for names in by_group.values()]


def evaluate_all(
    references: Sequence[Reference],
    low_dose: Sequence[Reference],
    phantoms: Sequence[Phantom],
    baselines: Mapping[str, Method],
    models: Mapping[str, Method],
    config: CtEvalConfig,
    recipe: NoiseRecipe = TESTING,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> CtEvalResult:
    """Slices, phantoms and low-dose slices through every method, aggregated.

    ``baselines`` should be :func:`baseline_methods` (``nlm`` and, if present, ``bm3d``
    are the bar's references); ``models`` are the blind models, the bar method being
    ``config.bar_method`` or the first of them. On low-dose slices only ``input``,
    ``nlm`` (with a blind σ estimate) and the models run.

    Parameters
    ----------
    references, low_dose : sequence of Reference
        Reference slices (noise is added) and real low-dose slices (run as they are).
    phantoms : sequence of Phantom
        Exact-truth phantoms, e.g. :func:`evaluation_phantoms`.
    baselines, models : mapping of str to Method
        The baselines and the blind models.
    config : CtEvalConfig
        Levels, seed, bias draws and bar method.
    recipe : NoiseRecipe
        How the noise is made.
    log : callable
        Progress messages.
    device : str
        Where the fan-beam simulation runs.
    cache_dir : Path, optional
        Keeps simulated noise and the baselines' outputs (:class:`Memoised`) between runs.

    Returns
    -------
    CtEvalResult
        Rows, aggregates with CIs, paired differences, phantom and low-dose rows, the
        outputs kept for figures and the seconds of each stage (``command`` and
        ``provenance`` empty: the caller fills them).

    Raises
    ------
    ValueError
        If ``config.bar_method`` names no evaluated method.
    """
    if cache_dir is not None:
        baselines = {
            name: Memoised(name, method, cache_dir) if name in ("nlm", "bm3d") else method
            for name, method in baselines.items()
        }
    methods = {**baselines, **models}
    bar_method = config.bar_method or next(iter(models), None)
    if bar_method is not None and bar_method not in methods:
        raise ValueError(f"bar_method {bar_method!r} is not evaluated; have {list(methods)}")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    levels = config.levels_hu
    rows, outputs = evaluate_slices(
        references, methods, levels, recipe, config.seed, representatives(references), log,
        device, cache_dir,
    )  # fmt: skip
    timings["slices"] = time.perf_counter() - started
    paired_rows = [
        diff
        for model in models
        for baseline in ("nlm", "bm3d")
        if baseline in baselines
        for diff in paired_differences(rows, model, baseline)
    ]
    started = time.perf_counter()
    phantom_rows = evaluate_phantoms(
        phantoms, methods, levels, recipe, config.seed, config.bias_draws, log=log,
        device=device, cache_dir=cache_dir,
    )  # fmt: skip
    timings["phantoms"] = time.perf_counter() - started
    started = time.perf_counter()
    blind = {name: baselines[name] for name in ("input", "nlm") if name in baselines}
    low_rows, low_outputs = evaluate_low_dose(low_dose, {**blind, **models}, log)
    timings["low_dose"] = time.perf_counter() - started
    return CtEvalResult(
        config, recipe, list(models), bar_method, "bm3d" in baselines, list(references), rows,
        aggregate(rows), aggregate(paired_rows, PAIRED_METRICS), phantom_rows,
        aggregate_phantoms(phantom_rows), list(low_dose), low_rows, outputs, low_outputs, timings,
    )  # fmt: skip
