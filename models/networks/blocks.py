"""Small building blocks shared by the denoisers and autoencoders."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def centre_channel(x: Tensor) -> Tensor:
    """The centre input channel (index ``C // 2``) of ``x``, keeping the channel axis.

    Parameters
    ----------
    x
        A batch of shape (N, C, H, W); for 2.5D input the channels are neighbouring slices.

    Returns
    -------
    Tensor
        Shape (N, 1, H, W), a view of ``x``.
    """
    centre = x.shape[1] // 2
    return x[:, centre : centre + 1]


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad ``x`` at the bottom and right so that H and W are multiples of ``multiple``.

    Reflection padding is used, so the network sees plausible anatomy at the border rather
    than a hard edge; where the padding would be as large as the image (reflection needs
    ``pad < size``, e.g. a 16-pixel image padded to 32) it falls back to edge replication.

    Parameters
    ----------
    x
        A batch of shape (N, C, H, W).
    multiple
        The size both spatial dimensions must be divisible by, usually ``2 ** depth``.

    Returns
    -------
    tuple[Tensor, tuple[int, int]]
        The padded batch and the original (H, W), for :func:`crop_to`.
    """
    return _pad(x, -x.shape[-2] % multiple, -x.shape[-1] % multiple)


def pad_to_at_least(x: Tensor, size: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad ``x`` at the bottom and right so that H and W are at least ``size``.

    For networks with unpadded convolutions (RED-CNN), which need a minimum input size;
    padding mode as in :func:`pad_to_multiple`.

    Returns
    -------
    tuple[Tensor, tuple[int, int]]
        The padded batch and the original (H, W), for :func:`crop_to`.
    """
    height, width = x.shape[-2], x.shape[-1]
    return _pad(x, max(size - height, 0), max(size - width, 0))


def _pad(x: Tensor, pad_h: int, pad_w: int) -> tuple[Tensor, tuple[int, int]]:
    height, width = x.shape[-2], x.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return x, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`: keep the top-left ``size`` = (H, W) of ``x``."""
    return x[..., : size[0], : size[1]]


def norm_layer(channels: int) -> nn.BatchNorm2d:
    """BatchNorm: at inference a fixed per-channel affine map, so a pixel's output does not
    depend on the rest of the image. Normalisations over the image (GroupNorm, InstanceNorm)
    would make an air-filled tile and a tissue tile scale differently, so tiled inference
    would not equal whole-slice inference and mean HU could drift with the field of view.
    """
    return nn.BatchNorm2d(channels)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 3×3 convolution with "same" zero padding (halving H and W when ``stride`` is 2)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ConvNormAct(nn.Sequential):
    """3×3 convolution, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            conv3x3(in_channels, out_channels, stride),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3×3 conv + BatchNorm layers with an identity shortcut (He et al. 2016).

    Parameters
    ----------
    channels
        Input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv3x3(channels, channels),
            norm_layer(channels),
            nn.ReLU(inplace=True),
            conv3x3(channels, channels),
            norm_layer(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``relu(x + body(x))``, same shape as ``x``."""
        out: Tensor = self.act(x + self.body(x))
        return out


class Upsample(nn.Sequential):
    """Double H and W with a 2×2 stride-2 transposed convolution, then BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2),
            norm_layer(out_channels),
            nn.ReLU(inplace=True),
        )


def zero_init(layer: nn.Conv2d | nn.ConvTranspose2d) -> None:
    """Set the weights and bias of ``layer`` to zero, so its output is exactly zero.

    Used on the last layer of the residual designs: a freshly built network then returns
    its input's centre channel unchanged, so an untrained model never alters an image.
    """
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
