"""Image quality metrics in modality units (HU), each stating the window it uses."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FULL_WINDOW = (-1024.0, 3072.0)
SOFT_TISSUE_WINDOW = (-160.0, 240.0)


def psnr(estimate: np.ndarray, reference: np.ndarray, window: tuple[float, float]) -> float:
    """PSNR in dB after clipping both images to ``window`` (peak = window width)."""
    low, high = window
    a = np.clip(estimate.astype(np.float64), low, high)
    b = np.clip(reference.astype(np.float64), low, high)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10((high - low) ** 2 / mse)


def rmse(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Root-mean-square error in modality units."""
    return float(
        np.sqrt(np.mean((estimate.astype(np.float64) - reference.astype(np.float64)) ** 2))
    )


def _as_float64(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _check_same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: np.shape(value) for name, value in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"arrays must have the same shape, got {shapes}")


def _roi_values(image: np.ndarray, roi: np.ndarray | None) -> np.ndarray:
    if roi is None:
        return image.ravel()
    mask = np.asarray(roi, dtype=bool)
    if mask.shape != image.shape:
        raise ValueError(f"roi shape {mask.shape} differs from image shape {image.shape}")
    if not mask.any():
        raise ValueError("roi is empty")
    return image[mask]


def ssim(estimate: np.ndarray, reference: np.ndarray, window: tuple[float, float]) -> float:
    """Structural similarity after clipping both images to a display window.

    Both images are clipped to ``window`` and shifted to ``[0, high - low]``;
    ``skimage.metrics.structural_similarity`` then runs with its defaults (7x7 uniform
    window, K1 = 0.01, K2 = 0.03) and ``data_range = high - low``. A 3-D (z, y, x)
    volume is scored slice by slice (CT slices are thicker than pixels are wide) and the
    slice values are averaged.

    Parameters
    ----------
    estimate, reference : np.ndarray
        Images in HU, 2-D (y, x) or 3-D (z, y, x), same shape, each side at least 7.
    window : tuple of float
        (low, high) HU, e.g. ``SOFT_TISSUE_WINDOW`` or ``FULL_WINDOW``.

    Returns
    -------
    float
        SSIM in [-1, 1]; exactly 1.0 when the clipped images are identical.
    """
    from skimage.metrics import structural_similarity

    _check_same_shape(estimate=estimate, reference=reference)
    low, high = window
    a = np.clip(_as_float64(estimate), low, high) - low
    b = np.clip(_as_float64(reference), low, high) - low
    if np.array_equal(a, b):
        return 1.0
    if a.ndim == 2:
        return float(structural_similarity(a, b, data_range=high - low))
    if a.ndim == 3:
        scores = [
            structural_similarity(x, y, data_range=high - low) for x, y in zip(a, b, strict=True)
        ]
        return float(np.mean(scores))
    raise ValueError(f"images must be 2-D or 3-D, got shape {a.shape}")


def snr_improvement_percent(
    noisy: np.ndarray,
    estimate: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None = None,
) -> float:
    """Relative SNR gain of ``estimate`` over ``noisy``, in percent.

    With SNR(x) = ||reference|| / ||x - reference|| (Euclidean norms in HU over the
    whole image, or over ``mask``; no window, no clipping), the result is
    ``100 * (SNR(estimate) / SNR(noisy) - 1)``. The reference norm cancels, so this
    equals ``100 * (||noisy - ref|| / ||estimate - ref|| - 1)`` and does not depend on
    the HU offset: 0 for the noisy image itself, +100 when the error norm halves, inf
    for a perfect estimate.

    Parameters
    ----------
    noisy, estimate, reference : np.ndarray
        Images in HU of the same shape.
    mask : np.ndarray or None
        Boolean region to evaluate; None uses every pixel.

    Returns
    -------
    float
        SNR improvement in percent (``inf`` if ``estimate`` equals ``reference``).

    Raises
    ------
    ValueError
        If shapes differ or ``noisy`` equals ``reference`` (the gain is undefined).
    """
    _check_same_shape(noisy=noisy, estimate=estimate, reference=reference)
    ref = _as_float64(reference)
    noise_norm = float(np.linalg.norm(_roi_values(_as_float64(noisy) - ref, mask)))
    error_norm = float(np.linalg.norm(_roi_values(_as_float64(estimate) - ref, mask)))
    if noise_norm == 0.0:
        raise ValueError("noisy equals reference: SNR improvement is undefined")
    if error_norm == 0.0:
        return float("inf")
    return 100.0 * (noise_norm / error_norm - 1.0)


def mean_bias_hu(estimate: np.ndarray, reference: np.ndarray, roi: np.ndarray | None) -> float:
    """Mean of ``estimate - reference`` inside ``roi`` (None: whole image), in HU, unclipped."""
    _check_same_shape(estimate=estimate, reference=reference)
    return float(np.mean(_roi_values(_as_float64(estimate) - _as_float64(reference), roi)))


def noise_sigma_hu(image: np.ndarray, reference: np.ndarray, roi: np.ndarray | None) -> float:
    """Standard deviation (ddof=1) of ``image - reference`` inside ``roi``, in HU, unclipped.

    Subtracting the exact truth first removes the phantom's structure, so the ROI need
    not be uniform; a constant bias does not count as noise.
    """
    _check_same_shape(image=image, reference=reference)
    values = _roi_values(_as_float64(image) - _as_float64(reference), roi)
    if values.size < 2:
        raise ValueError("roi must hold at least two pixels")
    return float(np.std(values, ddof=1))


def pooled_noise_sigma_hu(
    image: np.ndarray, reference: np.ndarray, rois: Sequence[np.ndarray]
) -> float:
    """Root-mean-square of the per-ROI ``noise_sigma_hu`` (pooled, ROIs weighted equally)."""
    if len(rois) == 0:
        raise ValueError("rois is empty")
    variances = [noise_sigma_hu(image, reference, roi) ** 2 for roi in rois]
    return float(np.sqrt(np.mean(variances)))


def noise_reduction_percent(
    noisy: np.ndarray,
    estimate: np.ndarray,
    reference: np.ndarray,
    rois: Sequence[np.ndarray],
) -> float:
    """Noise reduction ``100 * (1 - sigma_estimate / sigma_noisy)`` in percent.

    Each sigma is ``pooled_noise_sigma_hu`` over ``rois`` (per-ROI standard deviation of
    the image minus the truth, in HU, unclipped; pooled by root-mean-square so a per-ROI
    bias does not count as noise).

    Parameters
    ----------
    noisy, estimate, reference : np.ndarray
        Images in HU of the same shape.
    rois : sequence of np.ndarray
        Boolean masks, typically ``Phantom.uniform_rois``.

    Returns
    -------
    float
        0 for no change, 100 for a noise-free estimate, negative if noise grew.
    """
    sigma_noisy = pooled_noise_sigma_hu(noisy, reference, rois)
    if sigma_noisy == 0.0:
        raise ValueError("noisy has no noise in rois: noise reduction is undefined")
    return 100.0 * (1.0 - pooled_noise_sigma_hu(estimate, reference, rois) / sigma_noisy)


def cnr(image: np.ndarray, disk_mask: np.ndarray, background_mask: np.ndarray) -> float:
    """Contrast-to-noise ratio ``|mean(disk) - mean(bg)| / std(bg)`` (ddof=1), unclipped HU.

    Parameters
    ----------
    image : np.ndarray
        Image in HU.
    disk_mask, background_mask : np.ndarray
        Boolean masks of the object and of the surrounding background (e.g. a
        ``Disk.mask`` and its ``Disk.background_mask``).

    Returns
    -------
    float
        The CNR (``inf`` if the background has no noise and the contrast is not 0).
    """
    data = _as_float64(image)
    disk = _roi_values(data, disk_mask)
    background = _roi_values(data, background_mask)
    contrast = abs(float(disk.mean()) - float(background.mean()))
    sigma = float(np.std(background, ddof=1))
    if sigma == 0.0:
        return float("inf") if contrast > 0.0 else 0.0
    return contrast / sigma


def square_patches(mask: np.ndarray, size: int) -> list[tuple[slice, slice]]:
    """Non-overlapping ``size`` x ``size`` patches lying entirely inside a 2-D mask.

    The candidates tile the mask's bounding box on a grid of step ``size``.

    Parameters
    ----------
    mask : np.ndarray
        Boolean 2-D mask.
    size : int
        Patch side in pixels.

    Returns
    -------
    list of tuple of slice
        (row slice, column slice) for each patch, in raster order.
    """
    region = np.asarray(mask, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {region.shape}")
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        return []
    patches = []
    for r in range(int(rows.min()), int(rows.max()) - size + 2, size):
        for c in range(int(cols.min()), int(cols.max()) - size + 2, size):
            window = (slice(r, r + size), slice(c, c + size))
            if region[window].all():
                patches.append(window)
    return patches


def noise_power_spectrum_2d(
    noise: np.ndarray,
    pixel_spacing_mm: float,
    roi_size: int = 64,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """2-D noise power spectrum (HU^2 mm^2) of a noise image, averaged over square ROIs.

    ``NPS(fy, fx) = dx * dy / (N * N) * mean_k |DFT(roi_k - mean(roi_k))|^2`` over the
    non-overlapping ``roi_size`` squares inside ``mask`` (see ``square_patches``) of
    every slice. Its integral over frequency equals the noise variance. No window:
    ``noise`` is a difference image (e.g. estimate minus truth) in HU.

    Parameters
    ----------
    noise : np.ndarray
        Noise image(s) in HU, 2-D (y, x) or 3-D (z, y, x).
    pixel_spacing_mm : float
        Square in-plane pixel spacing in millimetres.
    roi_size : int
        Side of the square ROIs in pixels.
    mask : np.ndarray or None
        Boolean 2-D (y, x) region the ROIs must lie in; None uses the whole slice.

    Returns
    -------
    np.ndarray
        Shape (roi_size, roi_size), zero frequency at the centre (``fftshift`` layout);
        frequencies are ``nps_frequencies(roi_size, pixel_spacing_mm)``.

    Raises
    ------
    ValueError
        If no ROI fits.
    """
    data = _as_float64(noise)
    stack = data[None] if data.ndim == 2 else data
    if stack.ndim != 3:
        raise ValueError(f"noise must be 2-D or 3-D, got shape {data.shape}")
    region = np.ones(stack.shape[1:], dtype=bool) if mask is None else np.asarray(mask, bool)
    patches = square_patches(region, roi_size)
    if not patches:
        raise ValueError(f"no {roi_size}x{roi_size} ROI fits inside the mask")
    power = np.zeros((roi_size, roi_size))
    for image in stack:
        for window in patches:
            roi = image[window]
            power += np.abs(np.fft.fft2(roi - roi.mean())) ** 2
    power *= pixel_spacing_mm**2 / (roi_size * roi_size * len(patches) * len(stack))
    return np.asarray(np.fft.fftshift(power))


def nps_frequencies(roi_size: int, pixel_spacing_mm: float) -> np.ndarray:
    """Frequency axis (cycles/mm) of ``noise_power_spectrum_2d``, zero at the centre."""
    return np.asarray(np.fft.fftshift(np.fft.fftfreq(roi_size, d=pixel_spacing_mm)))


def _radial_frequency(nps_2d: np.ndarray, pixel_spacing_mm: float) -> np.ndarray:
    if nps_2d.ndim != 2 or nps_2d.shape[0] != nps_2d.shape[1]:
        raise ValueError(f"nps_2d must be square 2-D, got shape {nps_2d.shape}")
    freq = nps_frequencies(nps_2d.shape[0], pixel_spacing_mm)
    return np.asarray(np.hypot(freq[:, None], freq[None, :]))


def radial_nps(nps_2d: np.ndarray, pixel_spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged NPS up to the Nyquist frequency.

    Bins are ``1 / (N * dx)`` wide (one DFT sample), centred on multiples of it, from 0
    to the Nyquist frequency, as in ``models.simulation.noise_power_spectrum``.

    Parameters
    ----------
    nps_2d : np.ndarray
        Output of ``noise_power_spectrum_2d`` (fftshift layout).
    pixel_spacing_mm : float
        Pixel spacing in millimetres.

    Returns
    -------
    tuple of np.ndarray
        (frequencies in cycles/mm, mean NPS in each annulus in HU^2 mm^2).
    """
    radius = _radial_frequency(nps_2d, pixel_spacing_mm)
    step = 1.0 / (nps_2d.shape[0] * pixel_spacing_mm)
    index = np.rint(radius / step).astype(int).ravel()
    n_bins = nps_2d.shape[0] // 2 + 1  # 0 .. Nyquist
    keep = index < n_bins
    sums = np.bincount(index[keep], weights=nps_2d.ravel()[keep], minlength=n_bins)
    counts = np.bincount(index[keep], minlength=n_bins)
    return np.arange(n_bins) * step, sums / np.maximum(counts, 1)


def nps_mean_frequency(frequencies: np.ndarray, nps: np.ndarray) -> float:
    """Mean frequency of a radial NPS, ``sum f NPS_r(f) / sum NPS_r(f)`` (AAPM TG-233 f_av).

    Same definition and signature as ``models.simulation.nps_mean_frequency``. For
    white noise (flat radial NPS from 0 to the Nyquist frequency ``f_N = 1 / (2 dx)``,
    as from ``radial_nps``) it is ``f_N / 2``, or ``f_N * (1/2 + 1/N)`` for N-pixel ROIs
    whose mean was removed (the zero-frequency bin is then empty).

    Parameters
    ----------
    frequencies : np.ndarray
        Equally spaced radial frequencies in cycles/mm, e.g. from ``radial_nps``.
    nps : np.ndarray
        Radial NPS at those frequencies.

    Returns
    -------
    float
        The mean frequency in cycles/mm.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    power = np.asarray(nps, dtype=np.float64)
    if f.shape != power.shape or f.ndim != 1:
        raise ValueError(f"frequencies {f.shape} and nps {power.shape} must be equal 1-D")
    total = float(power.sum())
    if total <= 0.0:
        raise ValueError("nps has no power")
    return float((f * power).sum() / total)


def nps_mean_frequency_2d(nps_2d: np.ndarray, pixel_spacing_mm: float) -> float:
    """Mean spatial frequency (cycles/mm) over a 2-D NPS: ``sum |f| NPS(f) / sum NPS(f)``.

    Weighted over every DFT sample of the 2-D spectrum (corners included), not over the
    radial profile, so a ring at frequency f counts in proportion to its circumference.
    For white noise on a square grid it is the mean of ``|f|`` over the square
    ``[-f_N, f_N]^2``: ``f_N * (sqrt(2) + asinh(1)) / 3``, about 0.765 of the Nyquist
    frequency ``f_N = 1 / (2 dx)`` (``nps_mean_frequency`` of the radial NPS gives
    ``f_N / 2``).

    Parameters
    ----------
    nps_2d : np.ndarray
        Output of ``noise_power_spectrum_2d``.
    pixel_spacing_mm : float
        Pixel spacing in millimetres.

    Returns
    -------
    float
        The mean frequency in cycles/mm.
    """
    radius = _radial_frequency(nps_2d, pixel_spacing_mm)
    total = float(nps_2d.sum())
    if total <= 0.0:
        raise ValueError("nps_2d has no power")
    return float((radius * nps_2d).sum() / total)


def nlm_baseline(image_hu: np.ndarray, sigma_hu: float) -> np.ndarray:
    """Non-local means, the strong classical baseline of the project's quality bar.

    Given the true noise standard deviation ``sigma_hu``: h = 0.8 * sigma, 5x5 patches,
    13x13 search window, i.e. ``skimage.restoration.denoise_nl_means(patch_size=5,
    patch_distance=6, h=0.8 * sigma, sigma=sigma, fast_mode=True)``, applied to each 2-D
    slice in HU (no window, no rescaling).

    Parameters
    ----------
    image_hu : np.ndarray
        Noisy image in HU, 2-D (y, x) or 3-D (z, y, x).
    sigma_hu : float
        True noise standard deviation in HU (> 0).

    Returns
    -------
    np.ndarray
        Denoised image, float32 HU, same shape.
    """
    from skimage.restoration import denoise_nl_means

    if sigma_hu <= 0:
        raise ValueError(f"sigma_hu must be positive, got {sigma_hu}")
    data = np.asarray(image_hu, dtype=np.float32)
    stack = data[None] if data.ndim == 2 else data
    if stack.ndim != 3:
        raise ValueError(f"image_hu must be 2-D or 3-D, got shape {data.shape}")
    out = np.stack(
        [
            denoise_nl_means(
                image,
                patch_size=5,
                patch_distance=6,
                h=0.8 * sigma_hu,
                sigma=sigma_hu,
                fast_mode=True,
            )
            for image in stack
        ]
    ).astype(np.float32)
    return out[0] if data.ndim == 2 else out


def gaussian_baseline(image_hu: np.ndarray, sigma_px: float) -> np.ndarray:
    """In-plane Gaussian smoothing (``scipy.ndimage.gaussian_filter``, reflect borders).

    Parameters
    ----------
    image_hu : np.ndarray
        Image in HU, 2-D (y, x) or 3-D (z, y, x); 3-D is smoothed per slice only.
    sigma_px : float
        Kernel standard deviation in pixels (>= 0).

    Returns
    -------
    np.ndarray
        Smoothed image, float32 HU, same shape.
    """
    from scipy import ndimage

    if sigma_px < 0:
        raise ValueError(f"sigma_px must be >= 0, got {sigma_px}")
    data = np.asarray(image_hu, dtype=np.float64)
    if data.ndim not in (2, 3):
        raise ValueError(f"image_hu must be 2-D or 3-D, got shape {data.shape}")
    sigma = (0.0, sigma_px, sigma_px) if data.ndim == 3 else (sigma_px, sigma_px)
    return np.asarray(ndimage.gaussian_filter(data, sigma=sigma), dtype=np.float32)
