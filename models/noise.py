"""Image-domain CT-like noise: white noise shaped by a filtered-back-projection spectrum.

Filtered back projection gives noise whose power spectrum rises with spatial frequency
(ramp filter) and falls off at the reconstruction kernel's cut-off, so CT noise is
correlated, not white. This shapes white Gaussian noise with the amplitude spectrum
sqrt(|f|) * hann(f) and scales it to a chosen standard deviation in HU.
"""

from __future__ import annotations

import numpy as np


def fbp_noise_filter(height: int, width: int, cutoff: float = 0.5) -> np.ndarray:
    """Amplitude filter (height, width) in FFT layout: sqrt(ramp) times a Hann apodisation."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    radius = np.sqrt(fx**2 + fy**2)
    hann = np.where(radius < cutoff, 0.5 * (1 + np.cos(np.pi * radius / cutoff)), 0.0)
    return np.asarray(np.sqrt(radius) * hann, dtype=np.float64)


def ct_like_noise(
    shape: tuple[int, int, int],
    sigma_hu: np.ndarray | float,
    rng: np.random.Generator,
    cutoff: float = 0.5,
) -> np.ndarray:
    """Correlated noise of shape (n, h, w) with standard deviation ``sigma_hu`` per slice;
    ``cutoff`` (cycles per pixel, at most 0.5·√2) sets the texture: lower is coarser."""
    n, height, width = shape
    spectrum = np.fft.fft2(rng.standard_normal(shape)) * fbp_noise_filter(height, width, cutoff)
    noise = np.real(np.fft.ifft2(spectrum))
    noise /= noise.std(axis=(1, 2), keepdims=True) + 1e-12
    sigma = np.broadcast_to(np.asarray(sigma_hu, dtype=np.float64), (n,))[:, None, None]
    return (noise * sigma).astype(np.float32)
