"""Convolutional autoencoders (plain, U-Net, variational, residual) used as denoisers.

Unlike the residual denoisers, these have no global shortcut from input to output by
design, so a freshly constructed (untrained) autoencoder is **not** an identity map: it
returns an arbitrary image until trained. All are fully convolutional and reflection-pad
their input to a multiple of ``2 ** depth`` (cropping back), so any H, W ≥ 16 works.
"""

from __future__ import annotations

from itertools import pairwise
from typing import ClassVar

import torch
from torch import Tensor, nn

from models.networks.blocks import (
    ConvNormAct,
    ResidualBlock,
    Upsample,
    crop_to,
    pad_to_multiple,
)


def _widths(features: int, depth: int) -> list[int]:
    """Channels per level: ``features`` at full resolution, doubling at each level down."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    return [features * 2**level for level in range(depth + 1)]


class CAE(nn.Module):
    """A plain convolutional autoencoder: stride-2 convolutions down, transposed up.

    No skips, no normalisation, no global residual (not an identity when untrained).

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 or 5 neighbouring slices for 2.5D.
    features
        Channels at full resolution; each level down doubles them.
    depth
        Number of downsampling steps; the bottleneck is ``2 ** depth`` times smaller.
    """

    task: ClassVar[str] = "denoise"
    scale: ClassVar[int] = 1

    def __init__(self, in_channels: int = 1, features: int = 32, depth: int = 3) -> None:
        super().__init__()
        widths = _widths(features, depth)
        self.depth = depth
        encoder: list[nn.Module] = [nn.Conv2d(in_channels, features, 3, padding=1), nn.ReLU()]
        for w, w_next in pairwise(widths):
            encoder += [nn.Conv2d(w, w_next, 3, stride=2, padding=1), nn.ReLU()]
        decoder: list[nn.Module] = []
        for w, w_next in reversed(list(pairwise(widths))):
            decoder += [nn.ConvTranspose2d(w_next, w, 2, stride=2), nn.ReLU()]
        decoder.append(nn.Conv2d(features, 1, 3, padding=1))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` (N, C_in, H, W) as a clean centre channel (N, 1, H, W)."""
        padded, size = pad_to_multiple(x, 2**self.depth)
        return crop_to(self.decoder(self.encoder(padded)), size)


class UNetAE(nn.Module):
    """A U-Net (Ronneberger et al. 2015) used as an autoencoder: skips, no global residual.

    Two conv + BatchNorm + ReLU layers per level, max-pooling down, transposed
    convolutions up, skips concatenated. Not an identity when untrained.

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
        widths = _widths(features, depth)
        self.depth = depth
        ins = [in_channels, *widths[:-1]]
        self.encoders = nn.ModuleList(
            nn.Sequential(ConvNormAct(c, w), ConvNormAct(w, w))
            for c, w in zip(ins, widths, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList(Upsample(w_next, w) for w, w_next in pairwise(widths))
        self.decoders = nn.ModuleList(
            nn.Sequential(ConvNormAct(2 * w, w), ConvNormAct(w, w)) for w in widths[:-1]
        )
        self.head = nn.Conv2d(features, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` (N, C_in, H, W) as a clean centre channel (N, 1, H, W)."""
        padded, size = pad_to_multiple(x, 2**self.depth)
        h = padded
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                h = self.pool(h)
            h = encoder(h)
            skips.append(h)
        h = skips.pop()
        for level in reversed(range(self.depth)):
            h = self.ups[level](h)
            h = self.decoders[level](torch.cat([h, skips[level]], dim=1))
        return crop_to(self.head(h), size)


class VAE(nn.Module):
    """A convolutional variational autoencoder (Kingma & Welling 2014) with a spatial latent.

    The latent is a ``latent_channels`` map ``2 ** depth`` times smaller than the image,
    so the network stays fully convolutional. In train mode the latent is sampled with
    the reparameterisation trick; in eval mode the mean is used, so inference is
    deterministic. Train with the reconstruction loss plus ``kl_divergence(mu, logvar)``
    from :meth:`forward_with_latent`. Not an identity when untrained.

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 or 5 neighbouring slices for 2.5D.
    features
        Channels at full resolution; each level down doubles them.
    depth
        Number of downsampling steps.
    latent_channels
        Channels of the latent map.
    """

    task: ClassVar[str] = "denoise"
    scale: ClassVar[int] = 1

    # Keeps exp(logvar) finite in float32 early in training.
    _LOGVAR_RANGE: ClassVar[tuple[float, float]] = (-30.0, 20.0)

    def __init__(
        self, in_channels: int = 1, features: int = 32, depth: int = 3, latent_channels: int = 16
    ) -> None:
        super().__init__()
        widths = _widths(features, depth)
        self.depth = depth
        self.encoder = nn.Sequential(
            ConvNormAct(in_channels, features),
            *(ConvNormAct(w, w_next, stride=2) for w, w_next in pairwise(widths)),
        )
        self.to_mu = nn.Conv2d(widths[-1], latent_channels, 1)
        self.to_logvar = nn.Conv2d(widths[-1], latent_channels, 1)
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_channels, widths[-1], 1),
            nn.ReLU(inplace=True),
            *(Upsample(w_next, w) for w, w_next in reversed(list(pairwise(widths)))),
            nn.Conv2d(features, 1, 3, padding=1),
        )

    def forward_with_latent(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct ``x`` and return the latent distribution for the KL term.

        Parameters
        ----------
        x
            A batch of shape (N, C_in, H, W).

        Returns
        -------
        tuple[Tensor, Tensor, Tensor]
            The reconstruction (N, 1, H, W), and ``mu`` and ``logvar`` of the latent
            (N, latent_channels, H', W'), H' = ceil(H / 2**depth). The latent is sampled
            in train mode and is ``mu`` in eval mode.
        """
        padded, size = pad_to_multiple(x, 2**self.depth)
        h = self.encoder(padded)
        mu = self.to_mu(h)
        logvar = self.to_logvar(h).clamp(*self._LOGVAR_RANGE)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return crop_to(self.decoder(z), size), mu, logvar

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` (N, C_in, H, W) as a clean centre channel (N, 1, H, W)."""
        return self.forward_with_latent(x)[0]

    @staticmethod
    def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mu, exp(logvar)) || N(0, 1)), summed over the latent, mean over the batch.

        Written as ``mu² + (expm1(logvar) - logvar)``: the bracket is ≥ 0 and stays
        accurate near ``logvar = 0``, where ``exp(logvar) - 1 - logvar`` would round to a
        small negative number.

        Parameters
        ----------
        mu, logvar
            Mean and log-variance of the latent, shape (N, ...).

        Returns
        -------
        Tensor
            A scalar, ≥ 0; exactly 0 when ``mu`` and ``logvar`` are all zero.
        """
        variance_term = (torch.expm1(logvar) - logvar).clamp_min(0.0)
        per_element = 0.5 * (mu.pow(2) + variance_term)
        return per_element.flatten(1).sum(dim=1).mean()


class ResNetAE(nn.Module):
    """An autoencoder of residual blocks: no skips across the bottleneck, no global residual.

    Each encoder level is a residual block then a stride-2 convolution; the decoder mirrors
    it with transposed convolutions. Not an identity when untrained.

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 or 5 neighbouring slices for 2.5D.
    features
        Channels at full resolution; each level down doubles them.
    depth
        Number of downsampling steps.
    """

    task: ClassVar[str] = "denoise"
    scale: ClassVar[int] = 1

    def __init__(self, in_channels: int = 1, features: int = 32, depth: int = 3) -> None:
        super().__init__()
        widths = _widths(features, depth)
        self.depth = depth
        encoder: list[nn.Module] = [ConvNormAct(in_channels, features)]
        for w, w_next in pairwise(widths):
            encoder += [ResidualBlock(w), ConvNormAct(w, w_next, stride=2)]
        decoder: list[nn.Module] = [ResidualBlock(widths[-1])]
        for w, w_next in reversed(list(pairwise(widths))):
            decoder += [Upsample(w_next, w), ResidualBlock(w)]
        decoder.append(nn.Conv2d(features, 1, 3, padding=1))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x`` (N, C_in, H, W) as a clean centre channel (N, 1, H, W)."""
        padded, size = pad_to_multiple(x, 2**self.depth)
        return crop_to(self.decoder(self.encoder(padded)), size)
