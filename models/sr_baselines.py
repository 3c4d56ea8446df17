"""Super-resolution baselines: bicubic, and bicubic followed by a linear filter fitted
self-supervised (degrade LR → VLR, fit the filter that maps bicubic(VLR) back to LR)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.engine import bicubic_upsample
from models.train import degrade_for_sr


def degrade(volume_hu: np.ndarray, scale: int = 2) -> np.ndarray:
    """HR → LR with the same blur and downsampling the SR networks are trained on."""
    return degrade_for_sr(torch.from_numpy(volume_hu.astype(np.float32))[:, None], scale)[
        :, 0
    ].numpy()


def _filter(volume: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    size = kernel.shape[0]
    x = torch.from_numpy(volume.astype(np.float32))[:, None]
    x = F.pad(x, (size // 2,) * 4, mode="reflect")
    return F.conv2d(x, torch.from_numpy(kernel.astype(np.float32))[None, None])[:, 0].numpy()


def fit_linear_filter(lr_volume: np.ndarray, scale: int = 2, size: int = 5, samples: int = 200_000,
                      seed: int = 0) -> np.ndarray:  # fmt: skip
    """Least-squares ``size`` x ``size`` filter making bicubic(VLR) match LR.

    Fitted on the low-resolution images only (self-supervised, like the SR networks), then
    applied after bicubic upsampling of LR to estimate HR.
    """
    vlr = degrade(lr_volume, scale)
    up = bicubic_upsample(vlr, scale)
    height, width = min(up.shape[1], lr_volume.shape[1]), min(up.shape[2], lr_volume.shape[2])
    up, target = up[:, :height, :width], lr_volume[:, :height, :width]
    half = size // 2
    padded = np.pad(up, ((0, 0), (half, half), (half, half)), mode="reflect")
    rng = np.random.default_rng(seed)
    z = rng.integers(up.shape[0], size=samples)
    y = rng.integers(height, size=samples)
    x = rng.integers(width, size=samples)
    offsets = [(dy, dx) for dy in range(size) for dx in range(size)]
    design = np.stack([padded[z, y + dy, x + dx] for dy, dx in offsets], axis=1).astype(np.float64)
    solution, *_ = np.linalg.lstsq(design, target[z, y, x].astype(np.float64), rcond=None)
    # conv2d is a correlation, so the fitted weights are used as they are.
    return solution.reshape(size, size)


def bicubic_linear(lr_volume: np.ndarray, kernel: np.ndarray, scale: int = 2) -> np.ndarray:
    """Bicubic ×scale followed by the fitted linear filter."""
    return _filter(bicubic_upsample(lr_volume, scale), kernel)
