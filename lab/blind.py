"""`pacs-lab train-blind`: a blind CT denoiser on the manifest's training patients with
fan-beam noise over the clinical range (no noise level is given at inference).

The training images can be exported to one file (:func:`save_training_set`), so a machine
without the data archives (a rented GPU, say) trains on exactly the same slices.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lab import CT_MANIFEST as MANIFEST
from lab.native_noise import native_bank
from lab.noise import TRAINING, noise_bank
from models.checkpoint import ModelCard, initialise_from_checkpoint, save_checkpoint
from models.networks import build_network
from models.phantoms import low_contrast_phantom
from models.train import StepCallback, TrainConfig, train

# Training phantoms: seeds disjoint from every evaluation phantom (those use 9000+).
PHANTOM_SEED = 5000
_SET_FORMAT = 1
# Steps timed (after as many warm-up steps) to fit a run into a time budget.
_CALIBRATION_STEPS = 30


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """Training slices (HU, air at -1024), their pixel spacings and names, and the SHA-256
    of the manifest they were selected by."""

    images: list[np.ndarray]
    spacings: list[float]
    names: list[str]
    manifest_sha256: str

    @property
    def phantoms(self) -> int:
        return sum(name.startswith("phantom/") for name in self.names)

    def describe(self) -> str:
        real = len(self.names) - self.phantoms
        collections = {n.split("/")[0] for n in self.names if not n.startswith("phantom/")}
        return (
            f"lab/manifests/ct.json (SHA-256 {self.manifest_sha256[:16]}…) split 'train', "
            f"normal-dose slices only: {real} real slices of {len(collections)} collections; "
            f"{self.phantoms} low-contrast phantoms (seeds {PHANTOM_SEED}+)"
        )


def training_images(data_dir: Path, phantoms: int, manifest: Path = MANIFEST) -> TrainingSet:
    """The training split's normal-dose real slices and ``phantoms`` low-contrast phantoms."""
    from lab.data import load_slices, read_manifest, select  # pydicom: only here

    entries = select(read_manifest(manifest), "train", low_dose=False)
    images, spacings, names = [], [], []
    for item in load_slices(entries, data_dir):
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
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    return TrainingSet(images, spacings, names, sha)


def save_training_set(training_set: TrainingSet, path: Path) -> Path:
    """Write the set to one compressed ``.npz``, bit for bit: integer-valued slices (as
    most real CT is) as int16, the others as float32; both load as float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {}
    for index, image in enumerate(training_set.images):
        pixels = image.astype(np.float32)
        whole = pixels.astype(np.int16)
        exact = np.array_equal(whole.astype(np.float32), pixels)
        arrays[f"image_{index:04d}"] = whole if exact else pixels
    header = {
        "format": _SET_FORMAT,
        "spacings": training_set.spacings,
        "names": training_set.names,
        "manifest_sha256": training_set.manifest_sha256,
    }
    with path.open("wb") as handle:
        arrays["header"] = np.array(json.dumps(header))
        np.savez_compressed(handle, **arrays)
    return path


def load_training_set(path: Path) -> TrainingSet:
    """Read a set written by :func:`save_training_set`.

    Raises
    ------
    ValueError
        If the file is not such a set.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != _SET_FORMAT:
                raise ValueError(f"{path}: training-set format {header.get('format')!r} is not "
                                 f"{_SET_FORMAT}")  # fmt: skip
            images = [
                data[f"image_{i:04d}"].astype(np.float32) for i in range(len(header["names"]))
            ]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a training set written by pacs-lab: {exc}") from exc
    return TrainingSet(images, [float(s) for s in header["spacings"]], list(header["names"]),
                       str(header["manifest_sha256"]))  # fmt: skip


def _seconds_per_step(
    network: torch.nn.Module, card: ModelCard, volumes: list[np.ndarray], config: TrainConfig,
    bank: list[np.ndarray] | None, device: str, native: list[np.ndarray] | None = None,
) -> float:  # fmt: skip
    """Wall seconds per training step on ``device``, timed on a throwaway copy."""
    marks: dict[int, float] = {}

    def mark(step: int, total: int, loss: float) -> None:
        marks[step] = time.perf_counter()

    trial = dataclasses.replace(config, steps=2 * _CALIBRATION_STEPS, save_every=10**9)
    with tempfile.TemporaryDirectory() as scratch:
        objective: Literal["denoise", "diffusion"] = (
            "diffusion" if card.task == "diffusion" else "denoise"
        )
        train(copy.deepcopy(network), card, volumes, trial, objective, Path(scratch), mark,
              noise_bank=bank, device=device, native_bank=native)  # fmt: skip
    last = 2 * _CALIBRATION_STEPS
    return (marks[last] - marks[_CALIBRATION_STEPS]) / _CALIBRATION_STEPS


def train_blind(
    training_set: TrainingSet,
    output: Path,
    *,
    name: str,
    version: str,
    architecture: str,
    arch_kwargs: dict[str, Any],
    description: str,
    config: TrainConfig,
    command: str,
    draws: int = 6,
    cache_dir: Path | None = None,
    on_step: StepCallback | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
    time_budget_s: float | None = None,
    init_from: Path | None = None,
    objective: Literal["denoise", "diffusion"] = "denoise",
    before_timing: Callable[[], None] | None = None,
    native_draws: int = 4,
) -> Path:
    """Train a 2D denoiser on fan-beam noise of σ 8-110 HU; write its card and weights.

    ``objective`` ``"diffusion"`` trains a conditional cold diffusion
    (``ColdDiffusion.training_loss``, architecture ``cold_diffusion``) on the same pairs;
    its card's task is then ``diffusion``.

    The noise bank holds ``draws`` fields per slice (recipe :data:`lab.noise.TRAINING`);
    each training patch takes one, scaled by a factor in ``config.noise_scale``.

    With ``time_budget_s``, ``config.steps`` is replaced by as many steps as fit in the
    budget (counted from this call, timed on a throwaway copy of the network after the noise
    bank is ready), so the cosine schedule still runs to its end; the card records the steps,
    and a run with that step count repeats it.

    ``init_from`` (a model card) starts the network from that checkpoint's verified weights
    (fine-tuning: the same architecture and arguments); the card records it.

    ``before_timing`` is called just before the steps are timed (runs sharing one GPU wait
    there for each other, so each is timed at the pace it will train at).

    ``draws`` 0 trains on image-domain CT-like noise instead of a fan-beam bank
    (``config.sigma_hu``, textures ``config.noise_cutoff``): a bank takes tens of seconds
    per slice on a CPU. With ``config.recorrupt_alpha`` > 0 each real slice's own noise is
    measured and ``native_draws`` fields of it recorrupt the pairs
    (:mod:`lab.native_noise`).
    """
    if (objective == "diffusion") != (architecture == "cold_diffusion"):
        raise ValueError(f"objective {objective} does not train architecture {architecture}: "
                         "the diffusion objective trains cold_diffusion, and only it")  # fmt: skip
    started_call = time.monotonic()
    torch.manual_seed(config.seed)
    images, spacings, names = training_set.images, training_set.spacings, training_set.names
    log(f"data: {len(images)} slices ({training_set.phantoms} phantoms)")
    started = time.perf_counter()
    bank = (
        noise_bank(images, spacings, TRAINING, draws, config.seed, cache_dir, log, device)
        if draws > 0
        else None
    )
    log(f"noise bank ready in {time.perf_counter() - started:.0f} s")
    native = None
    native_summary = None
    if config.recorrupt_alpha > 0:
        native, measured = native_bank(images, names, native_draws, config.seed)
        sigmas = [m.sigma_hu for m in measured if m is not None]
        real = sum(not name.startswith("phantom/") for name in names)
        native_summary = (
            f"Recorrupted-to-Recorrupted, alpha {config.recorrupt_alpha}: {native_draws} "
            f"fields per slice of its own noise (lab.native_noise), measured on "
            f"{len(sigmas)} of {real} real slices, sigma "
            f"{min(sigmas, default=0):.1f}-{max(sigmas, default=0):.1f} HU "
            f"(median {float(np.median(sigmas)) if sigmas else 0:.1f}); the other real slices "
            "and the phantoms train without recorruption"
        )
        log(native_summary)
    network = build_network(architecture, **arch_kwargs)
    initialised_from = (
        initialise_from_checkpoint(network, init_from, architecture, arch_kwargs, 1, "CT")
        if init_from is not None
        else None
    )
    card = ModelCard(
        name=name,
        version=version,
        task=objective,
        modality="CT",
        architecture=architecture,
        arch_kwargs=arch_kwargs,
        context_slices=1,
        description=description,
    )
    volumes = [image[None] for image in images]
    stop_at = None
    if time_budget_s is not None:
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        if before_timing is not None:
            before_timing()
        per_step = _seconds_per_step(network, card, volumes, config, bank, device, native)
        stop_at = started_call + time_budget_s
        steps = int(0.92 * (stop_at - time.monotonic()) / per_step)
        if steps < 1:
            raise ValueError(f"a {time_budget_s:.0f} s budget leaves no time to train "
                             f"({per_step:.3f} s per step)")  # fmt: skip
        config = dataclasses.replace(config, steps=steps)
        log(f"{per_step * 1000:.1f} ms per step: {steps} steps fit the budget")
    run_key = hashlib.sha256(
        json.dumps(
            [
                names,
                architecture,
                arch_kwargs,
                asdict(config),
                asdict(TRAINING),
                draws,
                training_set.manifest_sha256,
                initialised_from,
                objective,
                native_draws if config.recorrupt_alpha > 0 else None,
            ],
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    done = 0

    def count(step: int, total: int, loss: float) -> None:
        nonlocal done
        done = step
        if on_step is not None:
            on_step(step, total, loss)

    started = time.perf_counter()
    train(network, card, volumes, config, objective, output, count, noise_bank=bank,
          run_key=run_key, device=device, stop_at=stop_at, native_bank=native)  # fmt: skip
    seconds = time.perf_counter() - started
    training: dict[str, Any] = {
        "command": command,
        "data": training_set.describe(),
        "noise": (
            f"fan-beam simulation (lab.noise.TRAINING: {asdict(TRAINING)}), "
            f"{draws} draws per slice, scaled by {config.noise_scale}"
            if draws > 0
            else f"image-domain CT-like noise (models.noise.ct_like_noise), sigma "
            f"{config.sigma_hu} HU, cut-off {config.noise_cutoff} cycles per pixel"
        ),
        "config": asdict(config),
        "seconds": round(seconds, 1),
        "device": "cpu" if not device.startswith("cuda") else torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }
    if native_summary is not None:
        training["recorruption"] = native_summary
    if initialised_from is not None:
        training["init_from"] = initialised_from
    if done < config.steps:
        training["stopped_at_step"] = done  # time ran out before the schedule's end
    card = ModelCard(**{**asdict(card), "training": training})
    return save_checkpoint(output, network, card)
