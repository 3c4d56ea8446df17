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
    """Random patches (with 2.5D context) from a list of volumes, reproducibly."""

    def __init__(self, volumes: Sequence[np.ndarray], context: int, patch: int, seed: int) -> None:
        self.volumes = [v for v in volumes if v.shape[1] >= patch and v.shape[2] >= patch]
        if not self.volumes:
            raise ValueError(f"no training volume has slices of at least {patch}x{patch}")
        self.context = context
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def sample(self, count: int) -> np.ndarray:
        """(count, context, patch, patch) patches; the centre channel is the target slice."""
        half = self.context // 2
        out = np.empty((count, self.context, self.patch, self.patch), dtype=np.float32)
        for index in range(count):
            volume = self.volumes[self.rng.integers(len(self.volumes))]
            z = int(self.rng.integers(volume.shape[0]))
            y = int(self.rng.integers(volume.shape[1] - self.patch + 1))
            x = int(self.rng.integers(volume.shape[2] - self.patch + 1))
            picks = [min(max(z + k, 0), volume.shape[0] - 1) for k in range(-half, half + 1)]
            patch = volume[picks, y : y + self.patch, x : x + self.patch]
            if self.rng.random() < 0.5:  # left-right flip: anatomy is roughly symmetric
                patch = patch[:, :, ::-1]
            out[index] = patch
        return out


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
) -> nn.Module:
    """Train ``network`` in place and return it (in eval mode).

    ``volumes`` are in modality units (HU). Every ``config.save_every`` steps the
    optimiser state is saved to ``<output>/<name>.train-state.pt``; a later call with the
    same arguments resumes from it.
    """
    torch.manual_seed(config.seed)
    generator = np.random.default_rng(config.seed + 1)
    sampler = PatchSampler(
        [normalise(v, card) for v in volumes],
        card.context_slices if mode == "denoise" else 1,
        config.patch,
        config.seed,
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
    low, high = card.hu_window
    network.train()
    for step in range(start, config.steps):
        clean = torch.from_numpy(sampler.sample(config.batch_size))
        if mode == "denoise":
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
