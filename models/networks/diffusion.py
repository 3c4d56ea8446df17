"""Few-step conditional cold diffusion (CoreDiff style) that starts from the low-dose image."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.networks.blocks import centre_channel, crop_to, pad_to_multiple, zero_init
from models.networks.denoisers import DnCNN, ResUNet

__all__ = ["ColdDiffusion", "RestoreDnCNN", "RestoreResUNet", "RestoreUNet"]

RESTORERS = ("unet", "dncnn", "resunet")


def _groups(channels: int) -> int:
    """The largest of 8, 4, 2, 1 groups that divides ``channels`` (for GroupNorm)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def sinusoidal_embedding(position: Tensor, dim: int) -> Tensor:
    """Transformer-style sinusoidal embedding of a (N,) float position → (N, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=position.device, dtype=torch.float32) / half
    )
    angles = position.float()[:, None] * freqs[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class _TimeBlock(nn.Module):
    """Two conv-GroupNorm-SiLU layers; the time embedding is added after the first."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.time = nn.Linear(time_dim, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        h = F.silu(self.norm1(self.conv1(x)) + self.time(t_emb)[:, :, None, None])
        return F.silu(self.norm2(self.conv2(h)))


class RestoreUNet(nn.Module):
    """The restoration network R(x_t, x_low, t) → estimate of the clean image x0.

    A small U-Net on ``concat(x_t, x_low)`` with a sinusoidal embedding of the
    degradation level ``t / T``. Its output head is zero-initialised and added to the
    centre channel of ``x_low``, so untrained it returns ``x_low`` exactly whatever
    ``x_t`` and ``t`` are.

    Parameters
    ----------
    in_channels
        Channels of ``x_low`` (1 for 2D, 3 for 2.5D); ``x_t`` has one.
    features
        Width at full resolution; doubled at each level down.
    depth
        Number of ×2 down-samplings.
    time_dim
        Size of the sinusoidal time embedding.
    """

    def __init__(
        self, in_channels: int = 1, features: int = 32, depth: int = 2, time_dim: int = 64
    ) -> None:
        super().__init__()
        self.depth = depth
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.time_dim = time_dim
        widths = [features * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        width = in_channels + 1
        for level in range(depth):
            self.encoders.append(_TimeBlock(width, widths[level], time_dim))
            self.downs.append(nn.Conv2d(widths[level], widths[level], 3, stride=2, padding=1))
            width = widths[level]
        self.bottleneck = _TimeBlock(width, widths[depth], time_dim)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(nn.Conv2d(widths[level + 1], widths[level], 3, padding=1))
            self.decoders.append(_TimeBlock(2 * widths[level], widths[level], time_dim))
        self.head = nn.Conv2d(widths[0], 1, kernel_size=3, padding=1)
        for parameter in self.head.parameters():  # weight and bias
            nn.init.zeros_(parameter)

    def forward(self, x_t: Tensor, x_low: Tensor, t_frac: Tensor) -> Tensor:
        """Estimate x0 (N, 1, H, W) from ``x_t`` (N, 1, H, W), ``x_low`` (N, C, H, W).

        ``t_frac`` (N,) is the degradation level t / T in [0, 1].
        """
        height, width = x_t.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        h = torch.cat([x_t, x_low], dim=1)
        if pad_h or pad_w:  # odd sizes: pad to a multiple of 2**depth, crop at the end
            h = F.pad(h, (0, pad_w, 0, pad_h), mode="replicate")
        t_emb = self.time_mlp(sinusoidal_embedding(t_frac * 1000.0, self.time_dim))
        skips: list[Tensor] = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            h = encoder(h, t_emb)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h, t_emb)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            h = up(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
            h = decoder(torch.cat([h, skip], dim=1), t_emb)
        residual = self.head(h)[..., :height, :width]
        centre = x_low.shape[1] // 2
        return x_low[:, centre : centre + 1] + residual


class RestoreDnCNN(nn.Module):
    """A DnCNN-shaped restoration network R(x_t, x_low, t) → estimate of x0.

    The conv stack of :class:`~models.networks.denoisers.DnCNN` (BatchNorm in the hidden
    layers, no down-sampling) on ``concat(x_t, x_low)``, with a learned shift from the time
    embedding added before every ReLU. It predicts the low-dose noise and subtracts it from
    the centre channel of ``x_low``. The output convolution and the time shifts start at
    zero, so untrained it returns ``x_low`` exactly; :meth:`load_dncnn` copies a trained
    DnCNN of the same size into it, after which it returns that DnCNN's estimate at every
    level until training teaches it to use ``x_t`` and ``t``.

    Parameters
    ----------
    in_channels
        Channels of ``x_low`` (1 for 2D, 3 for 2.5D); ``x_t`` has one.
    features
        Channels of the hidden layers.
    depth
        Number of convolution layers, at least 2.
    time_dim
        Size of the sinusoidal time embedding.
    """

    def __init__(
        self, in_channels: int = 1, features: int = 32, depth: int = 10, time_dim: int = 64
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be at least 2, got {depth}")
        self.in_channels, self.features, self.depth = in_channels, features, depth
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.first = nn.Conv2d(in_channels + 1, features, 3, padding=1)
        self.convs = nn.ModuleList(
            nn.Conv2d(features, features, 3, padding=1, bias=False) for _ in range(depth - 2)
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(features) for _ in range(depth - 2))
        self.shifts = nn.ModuleList(nn.Linear(time_dim, features) for _ in range(depth - 1))
        for parameter in self.shifts.parameters():  # weights and biases
            nn.init.zeros_(parameter)
        self.last = nn.Conv2d(features, 1, 3, padding=1)
        zero_init(self.last)

    def forward(self, x_t: Tensor, x_low: Tensor, t_frac: Tensor) -> Tensor:
        """Estimate x0 from the diffusion state and the low-dose condition.

        Parameters
        ----------
        x_t
            Degraded image at level t, (N, 1, H, W).
        x_low
            Low-dose input (N, C, H, W); its centre channel is the slice being restored.
        t_frac
            Degradation level t / T in [0, 1], (N,).

        Returns
        -------
        Tensor
            The estimate of the clean centre slice, (N, 1, H, W).
        """
        t_emb = self.time_mlp(sinusoidal_embedding(t_frac * 1000.0, self.time_dim))
        shifts = [shift(t_emb)[:, :, None, None] for shift in self.shifts]
        h = F.relu(self.first(torch.cat([x_t, x_low], dim=1)) + shifts[0])
        for conv, norm, shift in zip(self.convs, self.norms, shifts[1:], strict=True):
            h = F.relu(norm(conv(h)) + shift)
        out: Tensor = centre_channel(x_low) - self.last(h)
        return out

    @torch.no_grad()
    def load_dncnn(self, source: DnCNN) -> None:
        """Copy a trained :class:`DnCNN` of the same size (its input is ``x_low``).

        The weights of the ``x_t`` input channel and the time shifts are set to zero, so
        the restorer then returns ``source(x_low)`` at every level (in eval mode, where
        both use the copied BatchNorm running statistics).

        Parameters
        ----------
        source
            The trained denoiser: ``in_channels`` equal to this restorer's, and the same
            number of features and layers.

        Raises
        ------
        ValueError
            If ``source`` has another number of input channels, features or layers.
        """
        layers = list(source.body)
        first, last = layers[0], layers[-1]
        convs = [m for m in layers[1:-1] if isinstance(m, nn.Conv2d)]
        norms = [m for m in layers if isinstance(m, nn.BatchNorm2d)]
        if not (
            isinstance(first, nn.Conv2d)
            and isinstance(last, nn.Conv2d)
            and first.in_channels == self.in_channels
            and first.out_channels == self.features
            and len(convs) == len(self.convs)
            and len(norms) == len(self.norms)
        ):
            raise ValueError(
                f"cannot initialise a {self.depth}-layer, {self.features}-feature restorer on "
                f"{self.in_channels} channels from this DnCNN ({len(convs) + 2} layers, "
                f"{first.out_channels} features, {first.in_channels} input channels)"
            )
        weight = first.weight
        self.first.load_state_dict(
            {  # the x_t channel (first) starts at zero
                "weight": torch.cat([torch.zeros_like(weight[:, :1]), weight], dim=1),
                "bias": first.state_dict()["bias"],
            }
        )
        for target, conv in zip(self.convs, convs, strict=True):
            target.load_state_dict(conv.state_dict())
        for target, norm in zip(self.norms, norms, strict=True):
            target.load_state_dict(norm.state_dict())
        self.last.load_state_dict(last.state_dict())
        for parameter in self.shifts.parameters():
            parameter.zero_()


class RestoreResUNet(nn.Module):
    """Restoration network on a blind residual U-Net (:class:`ResUNet`).

    ``x_t`` joins ``x_low`` as one more input channel (the first); the level t/T, through a
    sinusoidal embedding, shifts the features after the stem and after the bottleneck. The
    estimate is ``centre(x_low)`` plus the U-Net's residual, as in the denoiser.

    Parameters
    ----------
    in_channels
        Channels of ``x_low`` (1 for 2D, 3 for 2.5D); ``x_t`` has one.
    features
        Channels of the U-Net's first level.
    depth
        The U-Net's number of downsampling steps.
    time_dim
        Size of the sinusoidal time embedding.
    """

    def __init__(
        self, in_channels: int = 1, features: int = 12, depth: int = 4, time_dim: int = 64
    ) -> None:
        super().__init__()
        self.in_channels, self.features, self.depth = in_channels, features, depth
        self.time_dim = time_dim
        self.unet = ResUNet(in_channels + 1, features, depth)
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.shifts = nn.ModuleList(
            [nn.Linear(time_dim, features), nn.Linear(time_dim, features * 2**depth)]
        )
        for parameter in self.shifts.parameters():  # weights and biases
            nn.init.zeros_(parameter)

    def forward(self, x_t: Tensor, x_low: Tensor, t_frac: Tensor) -> Tensor:
        """Estimate x0 (N, 1, H, W) from ``x_t`` (N, 1, H, W), ``x_low`` (N, C, H, W) and
        the level ``t_frac`` = t / T in [0, 1], (N,)."""
        unet = self.unet
        t_emb = self.time_mlp(sinusoidal_embedding(t_frac * 1000.0, self.time_dim))
        stem_shift, bottleneck_shift = (shift(t_emb)[:, :, None, None] for shift in self.shifts)
        padded, size = pad_to_multiple(torch.cat([x_t, x_low], dim=1), 2**unet.depth)
        h = unet.stem(padded) + stem_shift
        skips = []
        for encoder, down in zip(unet.encoders, unet.downs, strict=True):
            h = encoder(h)
            skips.append(h)
            h = down(h)
        h = unet.bottleneck(h) + bottleneck_shift
        for level in reversed(range(unet.depth)):
            h = unet.ups[level](h)
            h = unet.fuses[level](torch.cat([h, skips[level]], dim=1))
            h = unet.decoders[level](h)
        out: Tensor = centre_channel(x_low) + crop_to(unet.head(h), size)
        return out

    @torch.no_grad()
    def load_resunet(self, source: ResUNet) -> None:
        """Copy a trained :class:`ResUNet` denoiser of the same size (its input is ``x_low``).

        The stem's weights for the ``x_t`` channel and the time shifts are set to zero, so
        the restorer then returns ``source(x_low)`` at every level (in eval mode, where
        both use the copied BatchNorm running statistics).

        Raises
        ------
        ValueError
            If ``source`` has another number of input channels, features or levels.
        """
        state = source.state_dict()
        stem_key = "stem.0.weight"
        weight = state[stem_key]
        if (
            weight.shape[1] != self.in_channels
            or weight.shape[0] != self.features
            or source.depth != self.depth
        ):
            raise ValueError(
                f"cannot initialise a depth-{self.depth}, {self.features}-feature restorer on "
                f"{self.in_channels} channels from this ResUNet (depth {source.depth}, "
                f"{weight.shape[0]} features, {weight.shape[1]} input channels)"
            )
        state[stem_key] = torch.cat([torch.zeros_like(weight[:, :1]), weight], dim=1)
        self.unet.load_state_dict(state, strict=True)
        for parameter in self.shifts.parameters():
            parameter.zero_()


class ColdDiffusion(nn.Module):
    """Conditional cold diffusion from the low-dose image in a few steps (CoreDiff style).

    Degradation at level t of T::

        D(x0, t) = x0 + (t/T) (x_low - x0) + sigma(t/T) eps,
        sigma(s) = noise_scale * 2 * sqrt(s (1 - s)),

    an interpolation from the clean image (t = 0) to the low-dose image (t = T) with a
    Brownian-bridge-shaped noise that vanishes at both ends. Sampling is Algorithm 2 of
    Cold Diffusion (Bansal et al. 2022)::

        x_T = x_low;  x_{t-1} = x_t - D(x0_hat, t) + D(x0_hat, t-1),
        x0_hat = R(x_t, x_low, t),

    whose noise drawn for level t-1 is reused when level t-1 is removed at the next step.
    Untrained, R returns x_low, so every D(x0_hat, t) = x_low + sigma_t eps_t; the noise
    terms telescope and the sampler returns x_low (to float rounding).

    Parameters
    ----------
    in_channels
        Input channels: 1 for 2D, 3 (adjacent slices, 2.5D) — all condition the
        restoration; the centre one is the low-dose image being restored.
    steps
        T, the number of degradation levels and of sampling steps.
    noise_scale
        Peak noise standard deviation (at t = T/2), in normalised intensity units. With 0
        the sampler is deterministic; with > 0 different seeds give different samples
        (their per-pixel spread flags unstable, possibly hallucinated, structure).
    seed
        Seed of the local generator used by :meth:`forward` (the global RNG is never used
        for sampling).
    features, depth, time_dim
        Size of the restoration network: for the U-Net, its width and number of
        down-samplings (see :class:`RestoreUNet`); for the DnCNN, its width and number of
        convolution layers (see :class:`RestoreDnCNN`); for the residual U-Net, its width and
        levels (see :class:`RestoreResUNet`).
    restorer
        ``"unet"`` (:class:`RestoreUNet`), ``"dncnn"`` (:class:`RestoreDnCNN`, which
        :meth:`initialise_from` can start from a trained DnCNN denoiser) or ``"resunet"``
        (:class:`RestoreResUNet`, started likewise from a trained ResUNet). ``depth`` keeps
        its U-Net default of 2 unless given, so a DnCNN restorer should name its depth (the
        shipped one: 10) and a residual U-Net its levels (4).
    """

    task: ClassVar[str] = "diffusion"
    scale: ClassVar[int] = 1

    def __init__(
        self,
        in_channels: int = 1,
        steps: int = 10,
        noise_scale: float = 0.01,
        seed: int = 0,
        features: int = 32,
        depth: int = 2,
        time_dim: int = 64,
        restorer: Literal["unet", "dncnn", "resunet"] = "unet",
    ) -> None:
        super().__init__()
        if restorer not in RESTORERS:
            raise ValueError(f"restorer must be one of {', '.join(RESTORERS)}, got {restorer!r}")
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be ≥ 0, got {noise_scale}")
        self.in_channels = in_channels
        self.steps = steps
        self.noise_scale = noise_scale
        self.seed = seed
        # Steps of :meth:`forward` (a preset's ``steps``); None: all ``steps`` levels.
        # Other samples (:meth:`sample` without ``steps``) always use every level.
        self.sampling_steps: int | None = None
        self.restorer: RestoreUNet | RestoreDnCNN | RestoreResUNet
        if restorer == "unet":
            self.restorer = RestoreUNet(in_channels, features, depth, time_dim)
        elif restorer == "dncnn":
            self.restorer = RestoreDnCNN(in_channels, features, depth, time_dim)
        else:
            self.restorer = RestoreResUNet(in_channels, features, depth, time_dim)

    def initialise_from(self, source: nn.Module) -> None:
        """Start the restorer from a trained denoiser (before diffusion training).

        A ``"dncnn"`` restorer from a :class:`DnCNN`, a ``"resunet"`` one from a
        :class:`ResUNet`, of the same size: afterwards every restoration returns
        ``source``'s estimate, so in eval mode the sampler returns
        ``source(x)`` to float rounding (the noise it adds telescopes away) until training
        changes it.

        Parameters
        ----------
        source
            The trained denoiser whose weights the restorer takes.

        Raises
        ------
        ValueError
            For another restorer or source, or a source of another size.
        """
        if isinstance(self.restorer, RestoreDnCNN) and isinstance(source, DnCNN):
            self.restorer.load_dncnn(source)
        elif isinstance(self.restorer, RestoreResUNet) and isinstance(source, ResUNet):
            self.restorer.load_resunet(source)
        else:
            raise ValueError(
                "a cold diffusion can be initialised only with restorer 'dncnn' from a DnCNN "
                f"or 'resunet' from a ResUNet (got restorer {type(self.restorer).__name__}, "
                f"source {type(source).__name__})"
            )

    def sigma(self, s: float) -> float:
        """Noise standard deviation at degradation level ``s = t / T`` (0 at s = 0 and 1)."""
        return self.noise_scale * 2.0 * math.sqrt(max(s * (1.0 - s), 0.0))

    def restore(self, x_t: Tensor, x_low: Tensor, t: Tensor | float) -> Tensor:
        """Estimate the clean centre slice x0 (N, 1, H, W) from ``x_t`` at level ``t``.

        Parameters
        ----------
        x_t
            Degraded image (N, 1, H, W).
        x_low
            Low-dose input (N, C, H, W), the condition.
        t
            Degradation step in [0, T] (a number or an (N,) tensor); T = ``self.steps``.
        """
        level = torch.as_tensor(t, dtype=torch.float32, device=x_t.device) / self.steps
        return self.restorer(x_t, x_low, level.expand(x_t.shape[0]))

    def degrade(self, x0: Tensor, x_low_centre: Tensor, s: Tensor | float) -> Tensor:
        """Noise-free part of D: ``x0 + s (x_low - x0)`` at level ``s = t / T``."""
        return x0 + s * (x_low_centre - x0)

    @torch.no_grad()
    def _noise_like(self, x: Tensor, generator: torch.Generator) -> Tensor:
        # Drawn on the generator's device (CPU) so a seed gives the same noise on any device.
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        return noise.to(device=x.device, dtype=x.dtype)

    def sample(self, x: Tensor, steps: int | None = None, seed: int | None = None) -> Tensor:
        """Run the cold-diffusion sampler from the low-dose input ``x`` (N, C, H, W).

        Parameters
        ----------
        x
            Low-dose batch (N, C, H, W), normalised intensities.
        steps
            Sampling steps (default ``self.steps``); fewer than trained use a coarser
            grid of the same levels t / T.
        seed
            Seed of the local noise generator (default ``self.seed``).

        Returns
        -------
        Tensor
            The x0 estimate for the centre channel, (N, 1, H, W).
        """
        n_steps = self.steps if steps is None else steps
        if n_steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {n_steps}")
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        centre = x.shape[1] // 2
        x_low = x[:, centre : centre + 1]
        x_t = x_low
        noise_t: Tensor | float = 0.0  # sigma(1) = 0: x_T is x_low itself
        for k in range(n_steps, 0, -1):
            s_t, s_prev = k / n_steps, (k - 1) / n_steps
            x0_hat = self.restore(x_t, x, s_t * self.steps)
            sigma_prev = self.sigma(s_prev)
            noise_prev: Tensor | float = (
                sigma_prev * self._noise_like(x_low, generator) if sigma_prev > 0 else 0.0
            )
            x_t = (
                x_t
                - (self.degrade(x0_hat, x_low, s_t) + noise_t)
                + (self.degrade(x0_hat, x_low, s_prev) + noise_prev)
            )
            noise_t = noise_prev
        return x_t

    def forward(self, x: Tensor) -> Tensor:
        """Restore ``x`` (N, C, H, W) → (N, 1, H, W) with ``self.sampling_steps`` steps
        (default ``self.steps``) and ``self.seed``."""
        return self.sample(x, steps=self.sampling_steps)

    def training_loss(
        self, x0: Tensor, x_low: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """L1 loss of restoring a randomly degraded ``x0``.

        Draws t uniformly from {1, ..., T} per sample, builds
        ``x_t = x0 + (t/T)(x_low - x0) + sigma(t/T) eps`` and compares
        ``restore(x_t, x_low, t)`` with ``x0``.

        Parameters
        ----------
        x0
            Clean (full-dose) centre slices (N, 1, H, W).
        x_low
            Low-dose inputs (N, C, H, W), the centre channel aligned with ``x0``.
        generator
            Optional generator for t and the noise (the global RNG if None).

        Returns
        -------
        Tensor
            Scalar mean absolute error.
        """
        n = x0.shape[0]
        rng_device = generator.device if generator is not None else x0.device
        t = torch.randint(1, self.steps + 1, (n,), generator=generator, device=rng_device)
        s = (t.to(device=x0.device, dtype=x0.dtype) / self.steps)[:, None, None, None]
        centre = x_low.shape[1] // 2
        x_t = self.degrade(x0, x_low[:, centre : centre + 1], s)
        if self.noise_scale > 0:
            sigma = self.noise_scale * 2.0 * torch.sqrt((s * (1.0 - s)).clamp_min(0.0))
            eps = torch.randn(x0.shape, generator=generator, device=rng_device, dtype=x0.dtype)
            x_t = x_t + sigma * eps.to(x0.device)
        return F.l1_loss(self.restore(x_t, x_low, t.to(x0.device)), x0)
