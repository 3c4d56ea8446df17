"""The acquired noise of a training slice, modelled so it can be re-drawn (recorruption).

A normal-dose reference slice carries noise of its own (5-40 HU, more with sharp kernels).
A network trained to map ``reference + added noise`` to ``reference`` learns to keep
noise that looks like the reference's, so on a real low-dose scan whose noise resembles
a normal-dose sharp kernel it removes little (see docs/ct-denoising.md).

Recorrupted-to-Recorrupted (Pang et al., CVPR 2021) removes that bias without clean data:
with ``z`` drawn with the same covariance as the reference's own noise ``n`` and α > 0,
the input ``y + α z`` (plus the simulated low-dose noise) and the target ``y - z / α``
carry noises ``n + α z`` and ``n - z / α`` that are uncorrelated (their covariance is
Σ − Σ = 0), so for Gaussian noise the target's noise is independent of the input and the
loss's minimiser is that of a clean target (the conditional median for the L1 loss used
here, the expectation for L2). This module gives ``z``: a stationary Gaussian field with
the noise power spectrum (NPS) and σ measured in the slice's flat soft tissue, inside its
body only.
Exact-truth phantoms have no acquired noise, and get none.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lab.noise import MIN_SOFT_TISSUE_PX, soft_tissue_mask

ROI_PX = 24  # NPS ROI side (chest slices have little contiguous soft tissue)
# ROIs whose NPS is averaged: those whose detrended variance is at or below this quantile
# of all soft-tissue ROIs (the rest hold edges or texture, which would pass for noise).
FLAT_QUANTILE = 0.5
MIN_ROIS = 4


@dataclass(frozen=True)
class NativeNoise:
    """A slice's acquired noise: σ (HU), the radial NPS shape over frequency in cycles per
    pixel (0 to 0.5·√2; scaled to unit mean, :func:`native_field` sets the level from σ),
    and the number of ROIs the shape was averaged over."""

    sigma_hu: float
    frequencies: np.ndarray
    shape: np.ndarray
    rois: int


def detrended_rois(image: np.ndarray, mask: np.ndarray, size: int = ROI_PX) -> np.ndarray:
    """ROIs (k, size, size) float64 inside ``mask`` on a half-overlapping grid, each with its
    best-fit plane removed (anatomy varies slowly in flat tissue; noise does not)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    design = np.stack([np.ones(size * size), yy.ravel(), xx.ravel()], axis=1)
    pinv = np.linalg.pinv(design)
    stride = size // 2
    rois = []
    for top in range(0, image.shape[0] - size + 1, stride):
        for left in range(0, image.shape[1] - size + 1, stride):
            window = (slice(top, top + size), slice(left, left + size))
            if mask[window].all():
                values = image[window].astype(np.float64).ravel()
                rois.append((values - design @ (pinv @ values)).reshape(size, size))
    return np.stack(rois) if rois else np.empty((0, size, size))


def _radial_frequency(height: int, width: int) -> np.ndarray:
    """|f| in cycles per pixel on the (height, width) FFT grid."""
    return np.asarray(np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :]))


def measure_native_noise(image_hu: np.ndarray) -> NativeNoise | None:
    """The acquired noise of a slice (HU, air at -1024) in its flat soft tissue.

    σ is the median standard deviation of 24² ROIs, each with its best-fit plane removed
    (the median: structure only moves the upper tail, and the flattest ROIs alone would
    bias σ low); the NPS shape is averaged over the flatter half of them.

    Returns
    -------
    NativeNoise or None
        None when the slice has too little soft tissue or too few ROIs fit (the slice then
        gets no recorruption).
    """
    # Soft tissue of the smoothed slice (the noise of a sharp kernel would fragment the
    # mask), without the fall-back to the whole body: lungs and bone are not flat, and a σ
    # measured there would be too high.
    smooth = ndimage.gaussian_filter(image_hu.astype(np.float32), 2.0)
    try:
        mask = soft_tissue_mask(smooth, fall_back_to_body=False)
    except ValueError:  # no body at all
        return None
    if mask.sum() < MIN_SOFT_TISSUE_PX:
        return None
    rois = detrended_rois(image_hu, ndimage.binary_erosion(mask, iterations=2))
    if len(rois) < MIN_ROIS:
        return None
    variances = rois.reshape(len(rois), -1).var(axis=1)
    flat = rois[variances <= np.quantile(variances, FLAT_QUANTILE)]
    if len(flat) < MIN_ROIS:
        return None
    power = np.mean(np.abs(np.fft.fft2(flat)) ** 2, axis=0) / (ROI_PX * ROI_PX)
    radius = _radial_frequency(ROI_PX, ROI_PX).ravel()
    edges = np.linspace(0.0, radius.max() + 1e-9, ROI_PX // 2 + 2)
    which = np.digitize(radius, edges) - 1
    profile = np.array([power.ravel()[which == k].mean() for k in range(len(edges) - 1)])
    centres = 0.5 * (edges[:-1] + edges[1:])
    # The plane fit removes the lowest frequencies; the field keeps the next bin's level
    # there rather than a hole.
    profile[0] = profile[1]
    # The median ROI: the lowest half alone would bias σ low (ROIs where the noise
    # happened to be weak); structure only moves the upper tail.
    variance = float(np.median(variances))
    shape = profile / profile.mean()
    return NativeNoise(float(np.sqrt(variance)), centres, shape, len(flat))


def body_mask(image_hu: np.ndarray) -> np.ndarray:
    """The body with its lungs (holes filled), where acquired noise is seen; soft-edged."""
    body = ndimage.binary_fill_holes(image_hu > -500)
    body = ndimage.binary_dilation(body, iterations=2)
    return np.asarray(ndimage.gaussian_filter(body.astype(np.float32), 1.5), dtype=np.float32)


def native_field(
    noise: NativeNoise, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """A stationary Gaussian field of ``shape`` (y, x), float32 HU, with the noise's NPS
    shape and σ (periodic: white noise filtered in the Fourier domain)."""
    amplitude = np.sqrt(np.interp(_radial_frequency(*shape), noise.frequencies, noise.shape))
    white = rng.standard_normal(shape)
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * amplitude))
    field *= noise.sigma_hu / max(float(field.std()), 1e-9)
    return field.astype(np.float32)


def native_bank(
    images: Sequence[np.ndarray], names: Sequence[str], draws: int, seed: int
) -> tuple[list[np.ndarray], list[NativeNoise | None]]:
    """``draws`` fields of each slice's own noise, (draws, 1, y, x) float32 HU inside its
    body, zero for exact-truth phantoms (names ``phantom/...``) and for slices whose noise
    cannot be measured; and each slice's measured noise (None where none)."""
    bank, measured = [], []
    for index, (image, name) in enumerate(zip(images, names, strict=True)):
        noise = None if name.startswith("phantom/") else measure_native_noise(image)
        measured.append(noise)
        fields = np.zeros((draws, 1, *image.shape), dtype=np.float32)
        if noise is not None:
            slice_seed = int.from_bytes(
                hashlib.sha256(f"native:{seed}:{index}".encode()).digest()[:8], "little"
            )
            rng = np.random.default_rng(slice_seed)
            inside = body_mask(image)
            for k in range(draws):
                fields[k, 0] = native_field(noise, image.shape, rng) * inside
        bank.append(fields)
    return bank, measured
