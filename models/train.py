"""Training of zoo networks on volumes in modality units (supervised denoising, ×2 SR).

Denoising (L1 loss): the input is a slice (with its neighbours for 2.5D) plus simulated CT-like
noise, the target the slice as acquired. Super-resolution is self-supervised: slices are
degraded LR → VLR (blur + ×2 downsampling) and the network learns VLR → LR; being purely
convolutional it is then applied LR → HR (MSE loss). AdamW, cosine schedule, fixed seeds, and a
resumable training state saved beside the output.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import ModelCard
from models.mr import rician
from models.noise import ct_like_noise

logger = logging.getLogger(__name__)

Mode = Literal["denoise", "noise2noise", "diffusion", "super_resolution"]
StepCallback = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all recorded in the model card)."""

    steps: int = 2000
    batch_size: int = 16
    patch: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    sigma_hu: tuple[float, float] = (10.0, 50.0)
    noise_scale: tuple[float, float] = (0.5, 1.5)
    save_every: int = 500
    noise_model: Literal["ct", "rician"] = "ct"
    # "volume": each patch picks a volume uniformly, then a slice (a 3-slice phantom weighs
    # as much as a 100-slice series); "slice": every slice of every volume is equally likely.
    sampling: Literal["volume", "slice"] = "volume"
    rician_sigma: tuple[float, float] = (0.01, 0.08)
    # Weight of a variational network's KL term, per image pixel, next to the L1 loss in
    # normalised units (β-VAE); unused by every other network.
    kl_weight: float = 1e-4
    # "host": patches are cut on the CPU (the same patches on any device); "device": the
    # slices and the noise bank are held on the training device and cut there
    # (:class:`DevicePatchSampler`), so a GPU no longer waits for the CPU. Needs a noise bank.
    patch_sampling: Literal["host", "device"] = "host"
    # Image-domain noise (no bank): the texture's cut-off in cycles per pixel, one per
    # patch drawn from this range (0.5: the Hann window ends at Nyquist).
    noise_cutoff: tuple[float, float] = (0.5, 0.5)
    # Recorrupted-to-Recorrupted (Pang et al. 2021) against the references' own noise:
    # with a bank of fields ``z`` of each reference's acquired noise (``train``'s
    # ``native_bank``), the input gets ``+ alpha z`` and the target ``- z / alpha``, so the
    # network learns the clean image rather than the noisy reference. 0: off.
    recorrupt_alpha: float = 0.0


def normalise(volume: np.ndarray, card: ModelCard) -> np.ndarray:
    """Map modality values to the network's input range, as the inference engine does."""
    low, high = card.intensity_range(volume)
    return ((volume.astype(np.float32) - np.float32(low)) / np.float32(high - low)).astype(
        np.float32
    )


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel of (N, C, H, W), edges reflected;
    ``sigma`` in pixels, 0 or less returns ``images``."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    blurred = F.conv2d(
        F.pad(images, (radius, radius, 0, 0), mode="reflect"),
        kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    return F.conv2d(
        F.pad(blurred, (0, 0, radius, radius), mode="reflect"),
        kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
        groups=channels,
    )


def degrade_for_sr(images: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """LR → VLR: Gaussian blur (sigma 0.5 px per scale step) then area downsampling."""
    return F.avg_pool2d(gaussian_blur(images, 0.5 * scale), scale)


class PatchSampler:
    """Random patches (with 2.5D context) from a list of volumes, reproducibly.

    With ``noise`` (one array (draws, z, y, x) per volume, e.g. projection-domain
    low-dose noise simulated for every slice), each patch comes with the matching crop of
    one randomly chosen draw; neighbouring slices carry their own, independent noise.
    ``by_slice`` draws every slice of every volume with equal probability instead of first
    choosing a volume uniformly. With ``native`` (per volume (fields, z, y, x): each
    slice's own noise, for recorruption), every ``sample`` also crops one field per patch
    at the same place and flip, kept in ``last_native``.
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        context: int,
        patch: int,
        seed: int,
        noise: Sequence[np.ndarray] | None = None,
        by_slice: bool = False,
        native: Sequence[np.ndarray] | None = None,
    ) -> None:
        keep = [i for i, v in enumerate(volumes) if v.shape[1] >= patch and v.shape[2] >= patch]
        if not keep:
            raise ValueError(f"no training volume has slices of at least {patch}x{patch}")
        if noise is not None:
            for volume, draws in zip(volumes, noise, strict=True):
                if draws.shape[1:] != volume.shape:
                    raise ValueError(
                        f"noise draws {draws.shape} do not match volume {volume.shape}"
                    )
        if native is not None:
            for volume, fields in zip(volumes, native, strict=True):
                if fields.shape[1:] != volume.shape:
                    raise ValueError(
                        f"native noise {fields.shape} does not match volume {volume.shape}"
                    )
        self.volumes = [volumes[i] for i in keep]
        self.noise = [noise[i] for i in keep] if noise is not None else None
        self.native = [native[i] for i in keep] if native is not None else None
        # The matching crop of one native draw per patch from the last ``sample`` call
        # (count, context, patch, patch), when a native bank is given.
        self.last_native: np.ndarray | None = None
        self.context = context
        self.patch = patch
        self.rng = np.random.default_rng(seed)
        self.by_slice = by_slice
        self._slice_starts = np.cumsum([0] + [len(v) for v in self.volumes])

    def _pick(self) -> tuple[int, int]:
        """A volume index and a slice in it."""
        if self.by_slice:
            flat = int(self.rng.integers(int(self._slice_starts[-1])))
            which = int(np.searchsorted(self._slice_starts, flat, side="right")) - 1
            return which, flat - int(self._slice_starts[which])
        which = int(self.rng.integers(len(self.volumes)))
        return which, int(self.rng.integers(self.volumes[which].shape[0]))

    def sample(self, count: int, draws: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
        """Clean patches (count, context, patch, patch) and, with a noise bank, the same
        crop of ``draws`` distinct noise realisations: (draws, count, context, patch, patch)."""
        half = self.context // 2
        shape = (count, self.context, self.patch, self.patch)
        out = np.empty(shape, dtype=np.float32)
        noise_out = np.empty((draws, *shape), dtype=np.float32) if self.noise is not None else None
        native_out = np.empty(shape, dtype=np.float32) if self.native is not None else None
        for index in range(count):
            which, z = self._pick()
            volume = self.volumes[which]
            y = int(self.rng.integers(volume.shape[1] - self.patch + 1))
            x = int(self.rng.integers(volume.shape[2] - self.patch + 1))
            picks = [min(max(z + k, 0), volume.shape[0] - 1) for k in range(-half, half + 1)]
            window = (picks, slice(y, y + self.patch), slice(x, x + self.patch))
            flip = self.rng.random() < 0.5  # left-right flip: anatomy is roughly symmetric
            patch = volume[window]
            out[index] = patch[:, :, ::-1] if flip else patch
            if noise_out is not None and self.noise is not None:
                bank = self.noise[which]
                if bank.shape[0] < draws:
                    raise ValueError(
                        f"{draws} independent noise draws needed, the bank has {bank.shape[0]}"
                    )
                for slot, k in enumerate(self.rng.choice(bank.shape[0], size=draws, replace=False)):
                    noisy = bank[int(k)][window]
                    noise_out[slot, index] = noisy[:, :, ::-1] if flip else noisy
            if native_out is not None and self.native is not None:
                fields = self.native[which]
                own = fields[int(self.rng.integers(fields.shape[0]))][window]
                native_out[index] = own[:, :, ::-1] if flip else own
        self.last_native = native_out
        return out, noise_out


class DevicePatchSampler:
    """Random patches (with 2.5D context) and their noise, cut on the training device.

    The same draw as :class:`PatchSampler` (a slice, a position, a left-right flip and
    distinct noise draws per patch, volume- or slice-uniform), from a ``torch.Generator``
    on ``device``, with every slice and noise field held there. All volumes must share one
    slice size and every noise bank the same number of draws. ``native`` (own-noise
    fields, as for :class:`PatchSampler`) is held there too, and ``last_native`` is a tensor.
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        context: int,
        patch: int,
        seed: int,
        noise: Sequence[np.ndarray],
        by_slice: bool,
        device: str,
        native: Sequence[np.ndarray] | None = None,
    ) -> None:
        shapes = {v.shape[1:] for v in volumes}
        if len(shapes) != 1:
            raise ValueError(f"device patch sampling needs one slice size, got {sorted(shapes)}")
        height, width = shapes.pop()
        if height < patch or width < patch:
            raise ValueError(f"no training volume has slices of at least {patch}x{patch}")
        if {bank.shape[0] for bank in noise} != {noise[0].shape[0]}:
            raise ValueError("device patch sampling needs the same number of noise draws per slice")
        for volume, draws in zip(volumes, noise, strict=True):
            if draws.shape[1:] != volume.shape:
                raise ValueError(f"noise draws {draws.shape} do not match volume {volume.shape}")
        self.device = torch.device(device)
        self.slices = torch.from_numpy(np.concatenate(volumes)).to(self.device)
        # (slices, draws, y, x): one slice's draws side by side, copied volume by volume
        # (no second host copy of a bank of gigabytes).
        total, draws = sum(len(v) for v in volumes), noise[0].shape[0]
        self.bank = torch.empty((total, draws, height, width), dtype=torch.float32,
                                device=self.device)  # fmt: skip
        start = 0
        for bank in noise:
            self.bank[start : start + bank.shape[1]] = torch.from_numpy(
                np.ascontiguousarray(bank.swapaxes(0, 1), dtype=np.float32)
            ).to(self.device)
            start += bank.shape[1]
        # Each slice's own-noise fields (recorruption), held the same way; the crop of one
        # field per patch from the last ``sample`` call is ``last_native``.
        self.native: torch.Tensor | None = None
        self.last_native: torch.Tensor | None = None
        if native is not None:
            if {fields.shape[0] for fields in native} != {native[0].shape[0]}:
                raise ValueError("device patch sampling needs the same number of native noise "
                                 "fields per slice")  # fmt: skip
            for volume, fields in zip(volumes, native, strict=True):
                if fields.shape[1:] != volume.shape:
                    raise ValueError(
                        f"native noise {fields.shape} does not match volume {volume.shape}"
                    )
            self.native = torch.empty((total, native[0].shape[0], height, width),
                                      dtype=torch.float32, device=self.device)  # fmt: skip
            start = 0
            for fields in native:
                self.native[start : start + fields.shape[1]] = torch.from_numpy(
                    np.ascontiguousarray(fields.swapaxes(0, 1), dtype=np.float32)
                ).to(self.device)
                start += fields.shape[1]
        lengths = torch.tensor([len(v) for v in volumes], device=self.device)
        self._starts = torch.cumsum(lengths, 0) - lengths
        self._lengths = lengths
        self.context, self.patch, self.by_slice = context, patch, by_slice
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(seed)

    def _integers(self, high: torch.Tensor | int, count: int) -> torch.Tensor:
        """``count`` integers in [0, high) (``high`` a scalar or one bound per item)."""
        uniform = torch.rand(count, generator=self.rng, device=self.device)
        return (uniform * high).long().clamp(max=torch.as_tensor(high, device=self.device) - 1)

    def sample(self, count: int, draws: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean patches (count, context, patch, patch) and ``draws`` distinct noise crops
        of each, (draws, count, context, patch, patch), on the device."""
        total_draws = self.bank.shape[1]
        if total_draws < draws:
            raise ValueError(f"{draws} independent noise draws needed, the bank has {total_draws}")
        if self.by_slice:
            flat = self._integers(self.slices.shape[0], count)
            which = torch.searchsorted(self._starts, flat, right=True) - 1
        else:
            which = self._integers(len(self._lengths), count)
            flat = self._starts[which] + self._integers(self._lengths[which], count)
        first, last = self._starts[which], self._starts[which] + self._lengths[which] - 1
        half = self.context // 2
        offsets = torch.arange(-half, half + 1, device=self.device)
        picks = torch.minimum(torch.maximum(flat[:, None] + offsets, first[:, None]), last[:, None])
        span = torch.arange(self.patch, device=self.device)
        rows = self._integers(self.slices.shape[1] - self.patch + 1, count)[:, None] + span
        cols = self._integers(self.slices.shape[2] - self.patch + 1, count)[:, None] + span
        flip = torch.rand(count, generator=self.rng, device=self.device) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # left-right flip
        grid = (rows[:, None, :, None], cols[:, None, None, :])
        clean = self.slices[picks[:, :, None, None], grid[0], grid[1]]
        order = torch.rand(count, total_draws, generator=self.rng, device=self.device)
        chosen = order.argsort(dim=1)[:, :draws]  # distinct draws per patch
        noise = self.bank[
            picks[:, None, :, None, None], chosen[:, :, None, None, None],
            rows[:, None, None, :, None], cols[:, None, None, None, :],
        ]  # fmt: skip
        if self.native is not None:
            own = self._integers(self.native.shape[1], count)
            self.last_native = self.native[
                picks[:, :, None, None], own[:, None, None, None], grid[0], grid[1]
            ]
        return clean, noise.transpose(0, 1)


def _noise(
    clean: np.ndarray,
    bank_noise: np.ndarray | None,
    draws: int,
    config: TrainConfig,
    generator: np.random.Generator,
    window_width: float,
) -> list[torch.Tensor]:
    """``draws`` independent noise fields for the batch, in normalised units.

    From the bank (scaled by one random factor per patch, the same for every draw, so a
    Noise2Noise pair has equal noise levels), or image-domain CT-like noise.
    """
    count = clean.shape[0]
    if config.noise_model == "rician":
        # Magnitude MR: the noise is not additive; return noisy - clean so the caller's
        # ``clean + noise`` is the Rician-distributed magnitude. σ is relative to the
        # normalised volume (whose 99.5th percentile lies in (0.5, 1]).
        relative = generator.uniform(*config.rician_sigma, size=(count, 1, 1, 1))
        return [torch.from_numpy(rician(clean, relative, generator) - clean) for _ in range(draws)]
    if bank_noise is not None:
        scale = generator.uniform(*config.noise_scale, size=(count, 1, 1, 1)).astype(np.float32)
        return [torch.from_numpy(bank_noise[k] * scale) for k in range(draws)]
    sigma = [float(v) for v in generator.uniform(*config.sigma_hu, size=(count,))]
    low, high = config.noise_cutoff
    if low == high:  # one texture: no draw, so runs from before the range existed repeat
        cutoffs = [low] * count
    else:
        cutoffs = [float(v) for v in generator.uniform(low, high, size=(count,))]
    shape = (int(clean.shape[1]), int(clean.shape[2]), int(clean.shape[3]))
    fields = []
    for _ in range(draws):
        # Each context slice gets its own draw: one noise field on every slice would be
        # unrealistic.
        noise = np.stack(
            [ct_like_noise(shape, s, generator, c) for s, c in zip(sigma, cutoffs, strict=True)]
        )
        fields.append(torch.from_numpy(noise / np.float32(window_width)))
    return fields


def _reconstruction_loss(
    network: nn.Module, inputs: torch.Tensor, target: torch.Tensor, config: TrainConfig
) -> torch.Tensor:
    """L1 between output and target, plus the weighted KL term for a variational network
    (one with ``forward_with_latent`` and ``kl_divergence``, e.g. the VAE)."""
    if not hasattr(network, "forward_with_latent"):
        return F.l1_loss(network(inputs), target)
    output, mu, logvar = network.forward_with_latent(inputs)  # type: ignore[operator]
    pixels = target.shape[-1] * target.shape[-2]
    kl = network.kl_divergence(mu, logvar) / pixels  # type: ignore[operator]
    return F.l1_loss(output, target) + config.kl_weight * kl


def _summary_writer(log_dir: Path) -> Any:
    """A TensorBoard writer, or a clear error when the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ValueError(
            "TensorBoard logging needs the tensorboard package: pip install tensorboard "
            "(or the project's [train] extra)"
        ) from exc
    return SummaryWriter(log_dir=str(log_dir))


def _state_path(output: Path, card: ModelCard) -> Path:
    return output / f"{card.name}.train-state.pt"


def train(
    network: nn.Module,
    card: ModelCard,
    volumes: Sequence[np.ndarray],
    config: TrainConfig,
    mode: Mode,
    output: Path,
    on_step: StepCallback | None = None,
    noise_bank: Sequence[np.ndarray] | None = None,
    log_dir: Path | None = None,
    run_key: str = "",
    device: str = "cpu",
    stop_at: float | None = None,
    native_bank: Sequence[np.ndarray] | None = None,
) -> nn.Module:
    """Train ``network`` in place and return it (in eval mode, on the CPU).

    Steps run on ``device`` (e.g. ``"cuda"``); patches are drawn on the CPU (so a run draws
    the same patches and noise on any device), or on ``device`` itself with
    ``config.patch_sampling`` ``"device"`` (faster on a GPU; the draws then depend on the
    device's random number generator). With ``stop_at`` (a
    :func:`time.monotonic` value) the loop ends after the first step past it, keeping the
    weights reached; ``on_step`` tells the caller how many steps ran.

    With ``log_dir``, the loss (modality units) and learning rate of every step are written
    as TensorBoard scalars there (needs the ``tensorboard`` package).

    ``volumes`` are in modality units (HU). Denoising adds, to each input patch, the
    matching crop of ``noise_bank`` (per volume: (draws, z, y, x) in HU, e.g. simulated
    low-dose noise) scaled by a random factor in ``config.noise_scale``, or, without a
    bank, image-domain CT-like noise with σ in ``config.sigma_hu``. Every
    ``config.save_every`` steps the optimiser state is saved to
    ``<output>/<name>.train-state.pt``; a later call with the same arguments resumes from it.
    ``run_key`` (a digest of the run's arguments) is saved with the state, and a state
    saved under another key is refused rather than resumed.

    With ``config.recorrupt_alpha`` > 0, ``native_bank`` (per volume (draws, z, y, x) HU:
    fields with the covariance of each volume's own acquired noise, zero where it has
    none) recorrupts every denoising pair: input ``+ alpha z``, target ``- z / alpha``.

    Raises
    ------
    ValueError
        If the saved state belongs to a run with another ``run_key``.
    """
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed + 1)
    # Loss reported in modality units: HU for windowed (CT) cards, normalised units else.
    low, high = card.hu_window if card.normalisation == "window" else (0.0, 1.0)
    context = card.context_slices if mode != "super_resolution" else 1
    scaled_bank = (
        [(bank / np.float32(high - low)).astype(np.float32) for bank in noise_bank]
        if noise_bank is not None
        else None
    )
    if not 0.0 < config.noise_cutoff[0] <= config.noise_cutoff[1]:
        raise ValueError(
            f"noise_cutoff must be a range within (0, 0.71], got {config.noise_cutoff}"
        )
    alpha = config.recorrupt_alpha
    if alpha < 0:
        raise ValueError(f"recorrupt_alpha must be at least 0, got {alpha}")
    if alpha > 0 and context > 1:
        # Independent fields per context slice pair correctly only if the references' noise
        # is independent between slices, which overlapping reconstructions break.
        raise ValueError("recorruption trains 2D networks only (context_slices 1)")
    if alpha > 0 and (native_bank is None or mode != "denoise"):
        raise ValueError("recorruption needs a native noise bank and the denoise objective")
    scaled_native = (
        [(fields / np.float32(high - low)).astype(np.float32) for fields in native_bank]
        if alpha > 0 and native_bank is not None
        else None
    )
    on_device = config.patch_sampling == "device"
    sampler: PatchSampler | DevicePatchSampler
    if on_device:
        if (
            scaled_bank is None
            or mode not in ("denoise", "noise2noise", "diffusion")
            or config.noise_model != "ct"
        ):
            raise ValueError("device patch sampling needs a noise bank of CT noise and a "
                             "denoising objective")  # fmt: skip
        sampler = DevicePatchSampler(
            [normalise(v, card) for v in volumes], context, config.patch, config.seed,
            scaled_bank, config.sampling == "slice", device, native=scaled_native,
        )  # fmt: skip
    else:
        sampler = PatchSampler(
            [normalise(v, card) for v in volumes], context, config.patch, config.seed,
            scaled_bank, by_slice=config.sampling == "slice", native=scaled_native,
        )  # fmt: skip
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    start = 0
    state_path = _state_path(output, card)
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False, map_location=device)
        if state.get("run_key", "") != run_key:
            raise ValueError(
                f"{state_path} holds the state of another training run (other arguments, "
                "data or starting weights); delete it to train from the start"
            )
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        if isinstance(sampler, DevicePatchSampler):
            sampler.rng.set_state(state["sampler_rng"].cpu())  # loaded onto the device
        else:
            sampler.rng = state["sampler_rng"]
        generator = state["noise_rng"]
        start = int(state["step"])
        logger.info("resuming %s at step %d", card.name, start)
    writer = _summary_writer(log_dir) if log_dir is not None else None
    network.to(device).train()
    for step in range(start, config.steps):
        pair = mode == "noise2noise"
        noises: list[torch.Tensor] = []
        if isinstance(sampler, DevicePatchSampler):
            clean, crops = sampler.sample(config.batch_size, draws=2 if pair else 1)
            # One factor per patch, the same for every draw (as the host path).
            scale = torch.empty((config.batch_size, 1, 1, 1), device=sampler.device)
            scale.uniform_(*config.noise_scale, generator=sampler.rng)
            noises = [crop * scale for crop in crops]
        else:
            clean_np, bank_noise = sampler.sample(config.batch_size, draws=2 if pair else 1)
            clean = torch.from_numpy(clean_np).to(device)
            if mode != "super_resolution":
                noises = [
                    field.to(device)
                    for field in _noise(
                        clean_np, bank_noise, 2 if pair else 1, config, generator, high - low
                    )
                ]
        if mode == "super_resolution":
            # MSE, not L1: the residual over bicubic is small next to the noise of the
            # acquired slices, and L1's sign-like gradients left the network at bicubic
            # (1500 steps, no gain); MSE learns the deblurring in a few hundred steps.
            loss = F.mse_loss(network(degrade_for_sr(clean, card.scale_factor)), clean)
        else:
            inputs = clean + noises[0]
            half = clean.shape[1] // 2
            if mode == "diffusion":
                # The conditional diffusion model learns to restore the clean slice from
                # its degradation towards the low-dose input (cold diffusion).
                loss = network.training_loss(clean[:, half : half + 1], inputs)  # type: ignore[operator]
            elif pair:
                # Noise2Noise: the target is an independent noisy realisation of the same
                # anatomy; its noise averages out in the L1/L2 minimiser.
                target = (clean + noises[1])[:, half : half + 1]
                loss = _reconstruction_loss(network, inputs, target, config)
            elif alpha > 0:
                native = sampler.last_native  # a native bank is required above
                assert native is not None
                own = native if isinstance(native, torch.Tensor) else torch.from_numpy(native)
                own = own.to(device)
                target = (clean - own / alpha)[:, half : half + 1]
                loss = _reconstruction_loss(network, inputs + alpha * own, target, config)
            else:
                loss = _reconstruction_loss(network, inputs, clean[:, half : half + 1], config)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        loss_value = float(loss.detach()) * (high - low)
        if on_step is not None:
            on_step(step + 1, config.steps, loss_value)
        if writer is not None:
            writer.add_scalar("loss", loss_value, step + 1)
            writer.add_scalar("learning_rate", schedule.get_last_lr()[0], step + 1)
        if (step + 1) % config.save_every == 0 and step + 1 < config.steps:
            output.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "network": network.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "sampler_rng": sampler.rng.get_state()
                    if isinstance(sampler, DevicePatchSampler)
                    else sampler.rng,
                    "noise_rng": generator,
                    "step": step + 1,
                    "run_key": run_key,
                },
                state_path,
            )
        if stop_at is not None and time.monotonic() > stop_at:
            logger.warning("%s: time is up after step %d of %d", card.name, step + 1, config.steps)
            break
    if writer is not None:
        writer.close()
    state_path.unlink(missing_ok=True)
    return network.to("cpu").eval()
