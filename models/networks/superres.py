"""×2 in-plane super-resolution networks: a bicubic upsampling plus a learned residual."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LightSR", "PixelShuffleSR", "bicubic_centre", "clamp_to_local_range", "local_range"]

_SCALE = 2


def bicubic_centre(x: Tensor, scale: int = _SCALE) -> Tensor:
    """Bicubic upsampling of the centre input channel.

    Parameters
    ----------
    x
        Input batch (N, C, H, W).
    scale
        Integer upsampling factor.

    Returns
    -------
    Tensor
        (N, 1, H * scale, W * scale): channel ``C // 2`` upsampled with
        ``mode="bicubic", align_corners=False``.
    """
    centre = x.shape[1] // 2
    return F.interpolate(
        x[:, centre : centre + 1], scale_factor=scale, mode="bicubic", align_corners=False
    )


def local_range(image: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """The min and max of ``image`` (N, 1, H, W) over each ``window`` × ``window``
    neighbourhood (odd; edges replicated), both the size of ``image``."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1, got {window}")
    pad = window // 2
    high = F.max_pool2d(F.pad(image, (pad,) * 4, mode="replicate"), window, stride=1)
    low = -F.max_pool2d(F.pad(-image, (pad,) * 4, mode="replicate"), window, stride=1)
    return low, high


def clamp_to_local_range(estimate: Tensor, guide: Tensor, window: int) -> Tensor:
    """``estimate`` limited, pixel by pixel, to the min..max of ``guide`` over a
    ``window`` × ``window`` neighbourhood (odd; ``guide`` the size of ``estimate``, or
    ``1/scale`` of it: then each input pixel's range covers its ``scale`` × ``scale``
    output pixels).

    With the acquired low-resolution image as the guide, a super-resolved edge may be
    steeper than bicubic's but can hold no value that is not already present nearby in the
    input: no dark or bright rim beside bone, whatever the residual learned.
    """
    low, high = local_range(guide, window)
    factor = estimate.shape[-1] // guide.shape[-1]
    if factor > 1:
        low = F.interpolate(low, scale_factor=factor, mode="nearest")
        high = F.interpolate(high, scale_factor=factor, mode="nearest")
    return torch.maximum(torch.minimum(estimate, high), low)


def _subpixel_tail(features: int, scale: int) -> tuple[nn.Conv2d, nn.PixelShuffle]:
    """A conv to ``scale**2`` channels and its PixelShuffle, the conv zero-initialised.

    With zero weights and bias the tail outputs exactly 0, so an untrained network
    equals its bicubic skip.
    """
    conv = nn.Conv2d(features, scale * scale, kernel_size=3, padding=1)
    for parameter in conv.parameters():  # weight and bias
        nn.init.zeros_(parameter)
    return conv, nn.PixelShuffle(scale)


class LightSR(nn.Module):
    """A light residual CNN for ×2 super-resolution (ESPCN-like).

    A few 3×3 convolutions on the low-resolution grid predict a sub-pixel residual
    (conv to 4 channels, PixelShuffle(2)) that is added to the bicubic upsampling of the
    centre channel. The network is purely convolutional, so what it learns from
    very-low-resolution → low-resolution pairs applies unchanged to low → high resolution.
    Untrained, it equals bicubic interpolation exactly (the last conv is zero-initialised).

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 (adjacent slices) for 2.5D.
    features
        Width of the hidden convolutions.
    num_layers
        Convolutions on the low-resolution grid, including the first (≥ 1); the
        sub-pixel output conv comes on top.
    """

    task: ClassVar[str] = "super_resolution"
    scale: ClassVar[int] = _SCALE

    def __init__(self, in_channels: int = 1, features: int = 32, num_layers: int = 4) -> None:
        super().__init__()
        if in_channels < 1 or features < 1 or num_layers < 1:
            raise ValueError(
                f"in_channels, features and num_layers must be ≥ 1, got {in_channels}, "
                f"{features}, {num_layers}"
            )
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_layers):
            layers += [nn.Conv2d(width, features, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            width = features
        self.body = nn.Sequential(*layers)
        self.tail, self.shuffle = _subpixel_tail(features, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x`` (N, C, H, W) to the centre-channel estimate (N, 1, 2H, 2W)."""
        residual = self.shuffle(self.tail(self.body(x)))
        return bicubic_centre(x, self.scale) + residual


class _ResBlock(nn.Module):
    """EDSR residual block: conv-ReLU-conv, scaled, plus identity (no batch norm)."""

    def __init__(self, features: int, res_scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.conv2(torch.relu(self.conv1(x)))


class PixelShuffleSR(nn.Module):
    """A sub-pixel ×2 super-resolution network (EDSR/ESPCN-like) with a bicubic skip.

    Head conv, ``num_blocks`` EDSR residual blocks, a body conv with a long skip from
    the head, then a conv to 4 channels and PixelShuffle(2); the result is a residual
    over the bicubic upsampling of the centre channel. All work happens on the
    low-resolution grid. Untrained, it equals bicubic interpolation exactly.

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 (adjacent slices) for 2.5D.
    features
        Width of the feature maps.
    num_blocks
        Number of residual blocks.
    res_scale
        Multiplier of each block's residual branch (EDSR uses 0.1 for wide networks).
    clamp_window
        0: the output is bicubic + residual. Odd ``k`` ≥ 1: the output is also clamped to
        the local min..max of the input's centre channel over ``k`` × ``k`` input pixels
        (:func:`clamp_to_local_range`), so it holds no value beyond what the input has
        nearby: no halo, no rim.
    """

    task: ClassVar[str] = "super_resolution"
    scale: ClassVar[int] = _SCALE

    def __init__(
        self,
        in_channels: int = 1,
        features: int = 32,
        num_blocks: int = 8,
        res_scale: float = 1.0,
        clamp_window: int = 0,
    ) -> None:
        super().__init__()
        if clamp_window < 0 or (clamp_window and clamp_window % 2 == 0):
            raise ValueError(f"clamp_window must be 0 or odd, got {clamp_window}")
        self.clamp_window = clamp_window
        if in_channels < 1 or features < 1 or num_blocks < 0:
            raise ValueError(
                f"in_channels and features must be ≥ 1 and num_blocks ≥ 0, got {in_channels}, "
                f"{features}, {num_blocks}"
            )
        self.head = nn.Conv2d(in_channels, features, kernel_size=3, padding=1)
        self.blocks = nn.Sequential(*(_ResBlock(features, res_scale) for _ in range(num_blocks)))
        self.body_conv = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.tail, self.shuffle = _subpixel_tail(features, self.scale)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x`` (N, C, H, W) to the centre-channel estimate (N, 1, 2H, 2W)."""
        head = self.head(x)
        features = head + self.body_conv(self.blocks(head))
        residual = self.shuffle(self.tail(features))
        estimate = bicubic_centre(x, self.scale) + residual
        if not self.clamp_window:
            return estimate
        centre = x.shape[1] // 2
        return clamp_to_local_range(estimate, x[:, centre : centre + 1], self.clamp_window)
