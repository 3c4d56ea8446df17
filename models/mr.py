"""MR training and evaluation data without MR archives: brain-like phantoms and Rician noise.

Magnitude MR images carry Rician noise: the magnitude of the complex signal plus
independent Gaussian noise of equal σ in the real and imaginary channels (Gudbjartsson &
Patz 1995). The phantoms are numerical head slices (scalp, skull, CSF, grey and white
matter with cortex-like folding, ventricles and lesions) under a random T1-, T2- or
PD-like contrast, a smooth receive-coil bias field and a random intensity scale, so a
network trained on them meets the variety of vendor scaling it will see.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from models.phantoms import gaussian_random_field

__all__ = ["MR_CONTRASTS", "mr_phantom", "rician"]

# Relative tissue intensities (scalp/fat, skull, CSF, grey matter, white matter, lesion).
MR_CONTRASTS: dict[str, tuple[float, float, float, float, float, float]] = {
    "t1": (0.95, 0.08, 0.18, 0.55, 0.75, 0.40),
    "t2": (0.45, 0.06, 1.00, 0.60, 0.42, 0.85),
    "pd": (0.80, 0.10, 0.85, 0.75, 0.62, 0.80),
}


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, centre: tuple[float, float], axes: tuple[float, float]
) -> np.ndarray:
    inside: np.ndarray = ((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 <= 1
    return inside


def mr_phantom(size: int = 256, seed: int = 0) -> np.ndarray:
    """A noise-free brain-like magnitude MR slice (float32, ≥ 0, arbitrary units).

    Parameters
    ----------
    size : int
        Side of the square image in pixels (≥ 32).
    seed : int
        Chooses contrast, anatomy, bias field and intensity scale; the same seed gives
        the same image.

    Returns
    -------
    np.ndarray
        (size, size) image whose brightest tissue lies between 300 and 3000 units.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    rng = np.random.default_rng(seed)
    contrast = MR_CONTRASTS[("t1", "t2", "pd")[seed % 3]]
    fat, skull, csf, grey, white, lesion = contrast
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    shift = rng.uniform(-0.03, 0.03, size=2) * size
    centre = (size / 2 + shift[0], size / 2 + shift[1])
    head = (0.42 * size * rng.uniform(0.9, 1.0), 0.36 * size * rng.uniform(0.9, 1.0))
    image = np.zeros((size, size))
    image[_ellipse(yy, xx, centre, head)] = fat
    image[_ellipse(yy, xx, centre, (head[0] * 0.94, head[1] * 0.93))] = skull
    brain_axes = (head[0] * 0.86, head[1] * 0.84)
    image[_ellipse(yy, xx, centre, brain_axes)] = csf
    brain = _ellipse(yy, xx, centre, (brain_axes[0] * 0.96, brain_axes[1] * 0.95))
    # Cortex-like folding: grey matter where a smooth random field is high or near the
    # brain surface, white matter inside.
    folds = gaussian_random_field(size, 1.0, size / 64.0, rng)
    depth = ((yy - centre[0]) / brain_axes[0]) ** 2 + ((xx - centre[1]) / brain_axes[1]) ** 2
    grey_mask = brain & ((folds > 0.4) | (depth > 0.62))
    image[brain] = white
    image[grey_mask] = grey
    image[brain & (folds > 1.6)] = csf  # sulci
    for side in (-1, 1):  # lateral ventricles
        ventricle = (centre[0] - 0.05 * size, centre[1] + side * 0.07 * size)
        image[_ellipse(yy, xx, ventricle, (0.11 * size, 0.035 * size))] = csf
    for _ in range(int(rng.integers(0, 4))):
        radius = rng.uniform(0.01, 0.035) * size
        angle, r = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.6)
        spot = (centre[0] + r * brain_axes[0] * math.sin(angle),
                centre[1] + r * brain_axes[1] * math.cos(angle))  # fmt: skip
        image[brain & _ellipse(yy, xx, spot, (radius, radius))] = lesion
    texture = 1.0 + 0.03 * gaussian_random_field(size, 1.0, 1.5, rng)
    image = ndimage.gaussian_filter(image * texture, 0.6)  # partial volume at the edges
    u, v = (yy - size / 2) / size, (xx - size / 2) / size
    a, b, c = rng.uniform(-0.4, 0.4, size=3)
    bias = np.exp(a * u + b * v + c * (u**2 + v**2))
    scale = rng.uniform(300.0, 3000.0)
    return np.asarray(np.clip(image * bias, 0.0, None) * scale, dtype=np.float32)


def rician(image: np.ndarray, sigma: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of σ ``sigma`` per channel.

    Parameters
    ----------
    image : np.ndarray
        Noise-free magnitude image(s), any shape.
    sigma : float or np.ndarray
        Noise σ of each channel (broadcast against ``image``).
    rng : np.random.Generator
        Source of the noise.

    Returns
    -------
    np.ndarray
        Rician-distributed magnitude image, float32, same shape.
    """
    real = image + sigma * rng.standard_normal(image.shape)
    imaginary = sigma * rng.standard_normal(image.shape)
    return np.asarray(np.hypot(real, imaginary), dtype=np.float32)
