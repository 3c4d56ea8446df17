"""Training of zoo networks on volumes in modality units (supervised denoising, ×2 SR).

Denoising: the input is a slice (with its neighbours for 2.5D) plus simulated CT-like
noise, the target the slice as acquired. Super-resolution is self-supervised: slices are
degraded LR → VLR (blur + ×2 downsampling) and the network learns VLR → LR; being purely
convolutional it is then applied LR → HR. AdamW, cosine schedule, fixed seeds, and a
resumable training state saved beside the output.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import ModelCard
from models.noise import ct_like_noise

logger = logging.getLogger(__name__)

Mode = Literal["denoise", "super_resolution"]
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


def normalise(volume: np.ndarray, card: ModelCard) -> np.ndarray:
    """Map modality values to the network's input range, as the inference engine does."""
    low, high = card.hu_window
    return ((volume.astype(np.float32) - np.float32(low)) / np.float32(high - low)).astype(
        np.float32
    )


def degrade_for_sr(images: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """LR → VLR: Gaussian blur (sigma 0.5 px per scale step) then area downsampling."""
    sigma = 0.5 * scale
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    blurred = F.conv2d(
        F.pad(images, (radius, radius, 0, 0), mode="reflect"),
        kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    blurred = F.conv2d(
        F.pad(blurred, (0, 0, radius, radius), mode="reflect"),
        kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    return F.avg_pool2d(blurred, scale)


class PatchSampler:
    """Random patches (with 2.5D context) from a list of volumes, reproducibly.

    With ``noise`` (one array (draws, z, y, x) per volume, e.g. projection-domain
    low-dose noise simulated for every slice), each patch comes with the matching crop of
    one randomly chosen draw; neighbouring slices carry their own, independent noise.
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        context: int,
        patch: int,
        seed: int,
        noise: Sequence[np.ndarray] | None = None,
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
        self.volumes = [volumes[i] for i in keep]
        self.noise = [noise[i] for i in keep] if noise is not None else None
        self.context = context
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def sample(self, count: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(count, context, patch, patch) clean patches and, with a noise bank, their noise."""
        half = self.context // 2
        shape = (count, self.context, self.patch, self.patch)
        out = np.empty(shape, dtype=np.float32)
        noise_out = np.empty(shape, dtype=np.float32) if self.noise is not None else None
        for index in range(count):
            which = int(self.rng.integers(len(self.volumes)))
            volume = self.volumes[which]
            z = int(self.rng.integers(volume.shape[0]))
            y = int(self.rng.integers(volume.shape[1] - self.patch + 1))
            x = int(self.rng.integers(volume.shape[2] - self.patch + 1))
            picks = [min(max(z + k, 0), volume.shape[0] - 1) for k in range(-half, half + 1)]
            window = (picks, slice(y, y + self.patch), slice(x, x + self.patch))
            flip = self.rng.random() < 0.5  # left-right flip: anatomy is roughly symmetric
            patch = volume[window]
            out[index] = patch[:, :, ::-1] if flip else patch
            if noise_out is not None and self.noise is not None:
                draws = self.noise[which]
                noisy = draws[int(self.rng.integers(draws.shape[0]))][window]
                noise_out[index] = noisy[:, :, ::-1] if flip else noisy
        return out, noise_out


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
) -> nn.Module:
    """Train ``network`` in place and return it (in eval mode).

    ``volumes`` are in modality units (HU). Denoising adds, to each input patch, the
    matching crop of ``noise_bank`` (per volume: (draws, z, y, x) in HU, e.g. simulated
    low-dose noise) scaled by a random factor in ``config.noise_scale``, or, without a
    bank, image-domain CT-like noise with σ in ``config.sigma_hu``. Every
    ``config.save_every`` steps the optimiser state is saved to
    ``<output>/<name>.train-state.pt``; a later call with the same arguments resumes from it.
    """
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed + 1)
    low, high = card.hu_window
    sampler = PatchSampler(
        [normalise(v, card) for v in volumes],
        card.context_slices if mode == "denoise" else 1,
        config.patch,
        config.seed,
        [(bank / np.float32(high - low)).astype(np.float32) for bank in noise_bank]
        if noise_bank is not None
        else None,
    )
    optimiser = torch.optim.AdamW(
        network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps)
    start = 0
    state_path = _state_path(output, card)
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        network.load_state_dict(state["network"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        sampler.rng = state["sampler_rng"]
        generator = state["noise_rng"]
        start = int(state["step"])
        logger.info("resuming %s at step %d", card.name, start)
    network.train()
    for step in range(start, config.steps):
        clean_np, bank_noise = sampler.sample(config.batch_size)
        clean = torch.from_numpy(clean_np)
        if mode == "denoise" and bank_noise is not None:
            scale = generator.uniform(*config.noise_scale, size=(config.batch_size, 1, 1, 1))
            inputs = clean + torch.from_numpy((bank_noise * scale).astype(np.float32))
            half = clean.shape[1] // 2
            target = clean[:, half : half + 1]
        elif mode == "denoise":
            sigma = generator.uniform(*config.sigma_hu, size=config.batch_size)
            # The same noise field on every context slice would be unrealistic: each
            # slice gets its own draw.
            noise = np.stack(
                [
                    ct_like_noise(tuple(clean.shape[1:]), s, generator)  # type: ignore[arg-type]
                    for s in sigma
                ]
            ) / np.float32(high - low)
            inputs = clean + torch.from_numpy(noise)
            half = clean.shape[1] // 2
            target = clean[:, half : half + 1]
        else:
            target = clean
            inputs = degrade_for_sr(clean, card.scale_factor)
        loss = F.l1_loss(network(inputs), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if on_step is not None:
            on_step(step + 1, config.steps, float(loss.detach()) * (high - low))
        if (step + 1) % config.save_every == 0 and step + 1 < config.steps:
            output.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "network": network.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(),
                    "sampler_rng": sampler.rng,
                    "noise_rng": generator,
                    "step": step + 1,
                },
                state_path,
            )
    state_path.unlink(missing_ok=True)
    return network.eval()
