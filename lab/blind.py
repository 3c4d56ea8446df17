"""`pacs-lab train-blind`: a blind CT denoiser on the manifest's training patients with
fan-beam noise over the clinical range (no noise level is given at inference)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lab.data import MANIFEST, read_manifest, select
from lab.data import load_slices as load_manifest_slices
from lab.noise import TRAINING, noise_bank
from models.checkpoint import ModelCard, save_checkpoint
from models.networks import build_network
from models.phantoms import low_contrast_phantom
from models.train import StepCallback, TrainConfig, train

# Training phantoms: seeds disjoint from every evaluation phantom (those use 9000+).
PHANTOM_SEED = 5000


def training_images(
    data_dir: Path, phantoms: int, manifest: Path = MANIFEST
) -> tuple[list[np.ndarray], list[float], list[str]]:
    """The training split's normal-dose real slices and ``phantoms`` low-contrast phantoms:
    images (HU, air below -1024 set to -1024), pixel spacings and names."""
    entries = select(read_manifest(manifest), "train", low_dose=False)
    images, spacings, names = [], [], []
    for item in load_manifest_slices(entries, data_dir):
        images.append(np.maximum(item.hu, np.float32(-1024.0)))
        spacings.append(item.spacing_mm)
        names.append(f"{item.entry.collection}/{item.entry.member}")
    for index in range(phantoms):
        spacing = 0.7 + 0.05 * (index % 5)
        phantom = low_contrast_phantom(512, spacing, PHANTOM_SEED + index,
                                       background_hu=float(10 * (index % 5)))  # fmt: skip
        images.append(phantom.image.astype(np.float32))
        spacings.append(spacing)
        names.append(f"phantom/{PHANTOM_SEED + index}")
    return images, spacings, names


def train_blind(
    data_dir: Path,
    output: Path,
    *,
    name: str,
    version: str,
    architecture: str,
    arch_kwargs: dict[str, Any],
    description: str,
    config: TrainConfig,
    command: str,
    phantoms: int = 12,
    draws: int = 6,
    cache_dir: Path | None = None,
    on_step: StepCallback | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train a 2D denoiser on fan-beam noise of σ 8-110 HU; write its card and weights.

    The noise bank holds ``draws`` fields per slice (recipe :data:`lab.noise.TRAINING`);
    each training patch takes one, scaled by a factor in ``config.noise_scale``.
    """
    torch.manual_seed(config.seed)
    images, spacings, names = training_images(data_dir, phantoms)
    log(f"data: {len(images)} slices ({phantoms} phantoms)")
    started = time.perf_counter()
    bank = noise_bank(images, spacings, TRAINING, draws, config.seed, cache_dir, log)
    log(f"noise bank ready in {time.perf_counter() - started:.0f} s")
    network = build_network(architecture, **arch_kwargs)
    card = ModelCard(
        name=name,
        version=version,
        task="denoise",
        modality="CT",
        architecture=architecture,
        arch_kwargs=arch_kwargs,
        context_slices=1,
        description=description,
    )
    manifest_sha = hashlib.sha256(MANIFEST.read_bytes()).hexdigest()
    run_key = hashlib.sha256(
        json.dumps(
            [
                names,
                architecture,
                arch_kwargs,
                asdict(config),
                asdict(TRAINING),
                draws,
                manifest_sha,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    started = time.perf_counter()
    train(network, card, [image[None] for image in images], config, "denoise", output,
          on_step, noise_bank=bank, run_key=run_key)  # fmt: skip
    seconds = time.perf_counter() - started
    card = ModelCard(
        **{
            **asdict(card),
            "training": {
                "command": command,
                "data": (
                    f"lab/manifests/ct.json (SHA-256 {manifest_sha[:16]}…) split 'train', "
                    f"normal-dose slices only: {len(images) - phantoms} real slices of "
                    f"{len({n.split('/')[0] for n in names if not n.startswith('phantom')})} "
                    f"collections; {phantoms} low-contrast phantoms (seeds {PHANTOM_SEED}+)"
                ),
                "noise": (
                    f"fan-beam simulation (lab.noise.TRAINING: {asdict(TRAINING)}), "
                    f"{draws} draws per slice, scaled by {config.noise_scale}"
                ),
                "config": asdict(config),
                "seconds": round(seconds, 1),
                "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                "torch": torch.__version__,
            },
        }
    )
    return save_checkpoint(output, network, card)
