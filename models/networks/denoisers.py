"""Residual CNN denoisers (DnCNN, RED-CNN, residual U-Net), identity maps when untrained."""

from __future__ import annotations

from itertools import pairwise
from typing import ClassVar

import torch
from torch import Tensor, nn

from models.networks.blocks import (
    ConvNormAct,
    ResidualBlock,
    Upsample,
    centre_channel,
    crop_to,
    pad_to_at_least,
    pad_to_multiple,
    zero_init,
)


class DnCNN(nn.Module):
    """DnCNN (Zhang et al., IEEE TIP 2017): a plain conv stack that predicts the noise.

    ``forward`` returns the centre input channel minus the predicted noise. The last
    convolution starts at zero, so an untrained network is an exact identity on the centre
    channel. Works for any H and W (all convolutions are "same" padded).

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 or 5 neighbouring slices for 2.5D.
    features
        Channels of the hidden layers (64 in the paper).
    depth
        Number of convolution layers, at least 2 (17 in the paper). ``features=32,
        depth=8`` or ``features=24, depth=6`` are CPU-friendly variants.
    """

    task: ClassVar[str] = "denoise"
    scale: ClassVar[int] = 1

    def __init__(self, in_channels: int = 1, features: int = 64, depth: int = 17) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, features, 3, padding=1),
            nn.ReLU(inplace=True),
        ]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(features, features, 3, padding=1, bias=False),
                nn.BatchNorm2d(features),
                nn.ReLU(inplace=True),
            ]
        last = nn.Conv2d(features, 1, 3, padding=1)
        zero_init(last)
        self.body = nn.Sequential(*layers, last)

    def forward(self, x: Tensor) -> Tensor:
        """Denoise ``x`` (N, C_in, H, W); return the clean centre channel (N, 1, H, W)."""
        out: Tensor = centre_channel(x) - self.body(x)
        return out


class REDCNN(nn.Module):
    """RED-CNN (Chen et al., IEEE TMI 2017): residual encoder-decoder for low-dose CT.

    Five unpadded convolutions and five transposed convolutions with ReLU, and three
    shortcuts: input to output, 2nd conv to 4th deconv, 4th conv to 2nd deconv. The input
    shortcut carries the centre channel; the last deconvolution starts at zero, so an
    untrained network is an exact identity on it. The paper's final ReLU is left out: the
    engine's intensity window may map tissue below zero and clipping is the engine's job.
    Inputs smaller than ``5 * (kernel_size - 1) + 1`` pixels are padded and cropped back.

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 or 5 neighbouring slices for 2.5D.
    features
        Filters per layer (96 in the paper).
    kernel_size
        Kernel size of every layer (5 in the paper).
    """

    task: ClassVar[str] = "denoise"
    scale: ClassVar[int] = 1

    def __init__(self, in_channels: int = 1, features: int = 96, kernel_size: int = 5) -> None:
        super().__init__()
        k = kernel_size
        self.min_size = 5 * (k - 1) + 1
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_channels, features, k)]
            + [nn.Conv2d(features, features, k) for _ in range(4)]
        )
        last = nn.ConvTranspose2d(features, 1, k)
        zero_init(last)
        self.deconvs = nn.ModuleList(
            [nn.ConvTranspose2d(features, features, k) for _ in range(4)] + [last]
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Denoise ``x`` (N, C_in, H, W); return the clean centre channel (N, 1, H, W)."""
        padded, size = pad_to_at_least(x, self.min_size)
        c1, c2, c3, c4, c5 = self.convs
        d1, d2, d3, d4, d5 = self.deconvs
        out = self.relu(c2(self.relu(c1(padded))))
        skip_2 = out
        out = self.relu(c4(self.relu(c3(out))))
        skip_4 = out
        out = d1(self.relu(c5(out))) + skip_4
        out = d3(self.relu(d2(self.relu(out)))) + skip_2
        out = d5(self.relu(d4(self.relu(out))))
        result: Tensor = centre_channel(x) + crop_to(out, size)
        return result


class ResUNet(nn.Module):
    """A U-Net of residual blocks with a global residual on the centre channel.

    Each level has a residual block; stride-2 convolutions go down, transposed
    convolutions go up, and skips are concatenated and fused. The 1×1 output convolution
    starts at zero, so an untrained network is an exact identity on the centre channel.
    Inputs are reflection-padded to a multiple of ``2 ** depth`` and cropped back, so any
    H, W ≥ 16 works.

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 or 5 neighbouring slices for 2.5D.
    features
        Channels of the first level; each level down doubles them.
    depth
        Number of downsampling steps.
    """

    task: ClassVar[str] = "denoise"
    scale: ClassVar[int] = 1

    def __init__(self, in_channels: int = 1, features: int = 32, depth: int = 4) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.depth = depth
        widths = [features * 2**level for level in range(depth + 1)]
        self.stem = ConvNormAct(in_channels, features)
        self.encoders = nn.ModuleList(ResidualBlock(w) for w in widths[:-1])
        self.downs = nn.ModuleList(
            ConvNormAct(w, w_next, stride=2) for w, w_next in pairwise(widths)
        )
        self.bottleneck = ResidualBlock(widths[-1])
        self.ups = nn.ModuleList(Upsample(w_next, w) for w, w_next in pairwise(widths))
        self.fuses = nn.ModuleList(ConvNormAct(2 * w, w) for w in widths[:-1])
        self.decoders = nn.ModuleList(ResidualBlock(w) for w in widths[:-1])
        self.head = nn.Conv2d(features, 1, 1)
        zero_init(self.head)

    def forward(self, x: Tensor) -> Tensor:
        """Denoise ``x`` (N, C_in, H, W); return the clean centre channel (N, 1, H, W)."""
        padded, size = pad_to_multiple(x, 2**self.depth)
        h = self.stem(padded)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            h = encoder(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        for level in reversed(range(self.depth)):
            h = self.ups[level](h)
            h = self.fuses[level](torch.cat([h, skips[level]], dim=1))
            h = self.decoders[level](h)
        out: Tensor = centre_channel(x) + crop_to(self.head(h), size)
        return out
