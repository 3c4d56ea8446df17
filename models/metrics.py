"""Image quality metrics in modality units (HU), each stating the window it uses."""

from __future__ import annotations

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
