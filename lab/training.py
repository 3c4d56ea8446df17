"""`pacs-lab train`: read DICOM training data, train a zoo network, evaluate, write its card."""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from models.base import Task
from models.checkpoint import (
    ModelCard,
    initialise_from_checkpoint,
    save_checkpoint,
)
from models.classical import AnisotropicDiffusionFilter
from models.engine import EngineOptions, NetworkEnhancer, bicubic_upsample
from models.metrics import (
    FULL_WINDOW,
    SOFT_TISSUE_WINDOW,
    gaussian_baseline,
    nlm_baseline,
    psnr,
    rmse,
    ssim,
)
from models.mr import mr_phantom, rician
from models.networks import build_network
from models.noise import ct_like_noise
from models.phantoms import low_contrast_phantom
from models.simulation import LowDoseSimulator, ScanGeometry, calibrate_i0
from models.train import Mode, StepCallback, TrainConfig, degrade_for_sr, normalise, train
from pacs_node.dicom.classify import series_skip_reason
from pacs_node.dicom.scan import scan_series
from pacs_node.dicom.volume import load_series

_TASK_OF_MODE: dict[str, Task] = {
    "denoise": "denoise",
    "noise2noise": "denoise",
    "diffusion": "diffusion",
    "super_resolution": "super_resolution",
}


@dataclass(frozen=True)
class TrainingData:
    """Volumes (HU) split along z: the first part trains, the last ``held_out`` part evaluates."""

    name: str
    train: list[np.ndarray]
    held_out: list[np.ndarray]
    spacing_mm: list[float]  # in-plane pixel spacing of each series


def load_volumes(source: Path, held_out_fraction: float = 0.25) -> TrainingData:
    """Every enhanceable series under ``source`` (a folder or a .tar.xz archive)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = source
        if source.is_file():
            with tarfile.open(source) as archive:
                archive.extractall(tmp, filter="data")
            folder = Path(tmp)
        train_part, held_part, spacings = [], [], []
        for series in scan_series(folder).values():
            if series_skip_reason(series.headers) is not None or len(series.paths) < 8:
                continue
            volume = load_series(series.paths)
            values = volume.values
            spacings.append(volume.spacing_mm[1])
            cut = round(len(values) * (1 - held_out_fraction))
            train_part.append(values[:cut])
            held_part.append(values[cut:])
    if not train_part:
        raise ValueError(f"no enhanceable series with at least 8 slices under {source}")
    return TrainingData(source.name, train_part, held_part, spacings)


BANK_DOSE_FRACTION = 0.25
BANK_ELECTRONIC_NOISE_VAR = 10.0
_BANK_FORMAT = 2  # bump when the simulation changes, so cached banks are not reused


def _bank_key(
    volume: np.ndarray, spacing: float, draws: int, sigma: float, rng_state: Mapping[str, Any]
) -> str:
    """A digest of everything one volume's noise depends on: its slices, the simulation
    parameters and the random generator's state when its simulation starts."""
    digest = hashlib.sha256(
        json.dumps([_BANK_FORMAT, spacing, draws, sigma, BANK_DOSE_FRACTION,
                    BANK_ELECTRONIC_NOISE_VAR, rng_state, volume.shape],
                   sort_keys=True, default=str).encode()
    )  # fmt: skip
    digest.update(np.ascontiguousarray(volume, dtype=np.float32).tobytes())
    return digest.hexdigest()[:24]


def _volume_noise(
    volume: np.ndarray, spacing: float, draws: int, target_sigma_hu: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:  # fmt: skip
    geometry = ScanGeometry(pixel_spacing_mm=spacing)
    centre = volume[len(volume) // 2]
    soft = ndimage.binary_erosion(centre > -500, iterations=10) & (np.abs(centre) < 150)
    i0 = calibrate_i0(LowDoseSimulator(centre, geometry), soft, target_sigma_hu,
                      BANK_DOSE_FRACTION)  # fmt: skip
    noise = np.empty((draws, *volume.shape), dtype=np.float32)
    for z, plane in enumerate(volume):
        simulator = LowDoseSimulator(plane, geometry)
        for k in range(draws):
            noise[k, z] = simulator.extra_noise(
                BANK_DOSE_FRACTION, i0, BANK_ELECTRONIC_NOISE_VAR, rng
            )
    return noise, i0


def projection_noise_bank(
    volumes: list[np.ndarray],
    spacings: list[float],
    draws: int,
    target_sigma_hu: float,
    seed: int,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = None,
) -> list[np.ndarray]:
    """Simulated quarter-dose noise for every slice: (draws, z, y, x) per volume, in HU.

    I0 is calibrated once per volume, on its centre slice's soft tissue, so the added noise
    has σ ``target_sigma_hu``; each slice then gets ``draws`` independent realisations,
    all from one generator seeded with ``seed``, volume after volume.
    With ``cache_dir``, each volume's noise is kept there under a digest of its slices,
    the simulation parameters and the generator state it started from, with the state it
    ended in; later runs that share volumes (another architecture, added phantoms, a
    resumed run) load them and get exactly the noise a full simulation would give.
    """
    rng = np.random.default_rng(seed)
    bank = []
    for volume, spacing in zip(volumes, spacings, strict=True):
        cached = None
        if cache_dir is not None:
            key = _bank_key(volume, spacing, draws, target_sigma_hu, rng.bit_generator.state)
            cached = cache_dir / f"bank-{key}.npz"
            if cached.is_file():
                with np.load(cached) as stored:
                    bank.append(stored["noise"])
                    rng.bit_generator.state = json.loads(str(stored["rng_state_after"]))
                log(f"noise bank: {volume.shape[0]} slices loaded from {cached}")
                continue
        noise, i0 = _volume_noise(volume, spacing, draws, target_sigma_hu, rng)
        log(f"noise bank: {volume.shape[0]} slices x {draws} draws, I0 {i0:.3g}")
        bank.append(noise)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(".partial.npz")
            np.savez(partial, noise=noise,
                     rng_state_after=np.array(json.dumps(rng.bit_generator.state)))  # fmt: skip
            partial.replace(cached)
    return bank


def training_phantoms(count: int, size: int = 512) -> tuple[list[np.ndarray], list[float]]:
    """Phantom volumes (3 identical slices, exact truth) with seeds disjoint from the
    held-out phantoms used by the evaluation."""
    volumes, spacings = [], []
    for index in range(count):
        # 0.70-0.90 mm pixels; at least a 340 mm field of view, which the phantom needs.
        spacing = max(0.7 + 0.05 * (index % 5), 340.0 / size)
        phantom = low_contrast_phantom(size=size, pixel_spacing_mm=spacing, seed=5000 + index,
                                       background_hu=float(10 * (index % 5)))  # fmt: skip
        volumes.append(np.repeat(phantom.image[None], 3, axis=0))
        spacings.append(spacing)
    return volumes, spacings


def _evaluate_denoiser(
    network: torch.nn.Module, card: ModelCard, held_out: list[np.ndarray]
) -> dict[str, Any]:
    rng = np.random.default_rng(1234)
    enhancer = NetworkEnhancer(network, card, EngineOptions(device="cpu"))
    baseline = AnisotropicDiffusionFilter()
    results: dict[str, Any] = {}
    for sigma in (25.0, 50.0):
        rows: dict[str, list[float]] = defaultdict(list)
        for volume in held_out:
            noisy = volume + ct_like_noise(volume.shape, sigma, rng)
            outputs = {
                "input": noisy,
                "anisotropic_diffusion": baseline(noisy, (1.0, 1.0, 1.0))[0],
                "model": enhancer(noisy, (1.0, 1.0, 1.0))[0],
            }
            for method, image in outputs.items():
                rows[f"{method}_psnr_full_db"].append(psnr(image, volume, FULL_WINDOW))
                rows[f"{method}_psnr_soft_tissue_db"].append(
                    psnr(image, volume, SOFT_TISSUE_WINDOW)
                )
                rows[f"{method}_rmse_hu"].append(rmse(image, volume))
        results[f"added_noise_sigma_{int(sigma)}_hu"] = {
            k: round(float(np.mean(v)), 3) for k, v in rows.items()
        }
    return results


def mr_training_phantoms(count: int, size: int = 256) -> list[np.ndarray]:
    """MR phantom slices (1, y, x) with seeds disjoint from the held-out ones (9000+)."""
    return [mr_phantom(size, seed=6000 + index)[None] for index in range(count)]


def mr_held_out_images() -> dict[str, np.ndarray]:
    """Noise-free-enough MR images never trained on: 6 phantoms and pydicom's real MR slice."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_rescale

    images = {f"mr_phantom_{seed}": mr_phantom(256, seed=seed) for seed in range(9000, 9006)}
    path = get_testdata_file("MR_small.dcm", download=False)
    if path is not None:
        dataset = pydicom.dcmread(path)
        images["pydicom_MR_small"] = np.asarray(
            apply_rescale(dataset.pixel_array, dataset), dtype=np.float32
        )
    return images


def _evaluate_mr_denoiser(
    network: torch.nn.Module, card: ModelCard, held_out: list[np.ndarray]
) -> dict[str, Any]:
    """Rician noise at 3 % and 6 % of each image's 99.5th percentile; PSNR and SSIM over
    [0, that percentile]; input, Gaussian (σ 1 px), non-local means (h = 0.8 σ) and model."""
    del held_out  # MR is evaluated on its own held-out images
    rng = np.random.default_rng(1234)
    enhancer = NetworkEnhancer(network, card, EngineOptions(device="cpu"))
    results: dict[str, Any] = {}
    images = mr_held_out_images()
    for fraction in (0.03, 0.06):
        rows: dict[str, list[float]] = defaultdict(list)
        for reference in images.values():
            level = float(np.percentile(reference, 99.5))
            sigma = fraction * level
            noisy = rician(reference, sigma, rng)
            outputs = {
                "input": noisy,
                "gaussian": gaussian_baseline(noisy, 1.0),
                "nlm": nlm_baseline(noisy, sigma),
                "model": enhancer(noisy[None], (1.0, 1.0, 1.0))[0][0],
            }
            for method, image in outputs.items():
                rows[f"{method}_psnr_db"].append(psnr(image, reference, (0.0, level)))
                rows[f"{method}_ssim"].append(ssim(image, reference, (0.0, level)))
        results[f"rician_sigma_{round(fraction * 100)}_percent"] = {
            k: round(float(np.mean(v)), 3) for k, v in rows.items()
        }
    results["images"] = sorted(images)
    return results


def _evaluate_sr(
    network: torch.nn.Module, card: ModelCard, held_out: list[np.ndarray]
) -> dict[str, Any]:
    enhancer = NetworkEnhancer(network, card, EngineOptions(device="cpu"))
    rows: dict[str, list[float]] = defaultdict(list)
    for volume in held_out:
        low, high = card.hu_window
        vlr = degrade_for_sr(torch.from_numpy(normalise(volume, card))[:, None], card.scale_factor)
        vlr_hu = vlr[:, 0].numpy() * (high - low) + low
        outputs = {
            "bicubic": bicubic_upsample(vlr_hu, card.scale_factor),
            "model": enhancer(vlr_hu, (1.0, 1.0, 1.0))[0],
        }
        for method, image in outputs.items():
            rows[f"{method}_psnr_full_db"].append(psnr(image, volume, FULL_WINDOW))
            rows[f"{method}_psnr_soft_tissue_db"].append(psnr(image, volume, SOFT_TISSUE_WINDOW))
    return {"held_out_vlr_to_lr": {k: round(float(np.mean(v)), 3) for k, v in rows.items()}}


def train_model(
    data: Path | None,
    output: Path,
    *,
    name: str,
    version: str,
    mode: Mode,
    architecture: str,
    arch_kwargs: dict[str, Any],
    context_slices: int,
    modality: str,
    description: str,
    config: TrainConfig,
    command: str,
    noise: str = "image",
    phantoms: int = 0,
    noise_draws: int = 2,
    noise_sigma_hu: float = 20.0,
    on_step: StepCallback | None = None,
    log: Callable[[str], None] = print,
    log_dir: Path | None = None,
    noise_cache: Path | None = None,
    init_from: Path | None = None,
) -> Path:
    """Train, evaluate on held-out images and write ``<output>/<name>.{safetensors,json}``.

    MR (``modality="MR"``) trains on ``phantoms`` MR phantoms (plus ``data`` if given) with
    Rician noise and per-volume normalisation; CT needs ``data``. ``noise_cache`` keeps
    the projection-domain noise bank for later runs on the same data. ``init_from`` (a
    model card) starts the network from that checkpoint's verified weights: the same
    architecture, or a network with an ``initialise_from`` method (a cold diffusion
    started from a DnCNN); the card records the source's name, version and SHA-256.
    """
    torch.manual_seed(config.seed)
    mr = modality.upper() == "MR"
    if data is None and not (mr and phantoms):
        raise ValueError("training needs --data (or, for MR, --phantoms)")
    volumes = load_volumes(data) if data is not None else TrainingData("mr-phantoms", [], [], [])
    log(f"data: {len(volumes.train)} series, {sum(len(v) for v in volumes.train)} training slices")
    network = build_network(architecture, **arch_kwargs)
    initialised_from = (
        initialise_from_checkpoint(
            network, init_from, architecture, arch_kwargs, context_slices, modality
        )
        if init_from is not None
        else None
    )
    scale = int(getattr(network, "scale", 1))
    card = ModelCard(
        name=name,
        version=version,
        task=_TASK_OF_MODE[mode],
        modality=modality,
        architecture=architecture,
        arch_kwargs=arch_kwargs,
        context_slices=context_slices,
        scale_factor=scale,
        description=description,
        normalisation="volume" if mr else "window",
    )
    train_volumes, spacings = list(volumes.train), list(volumes.spacing_mm)
    if mr:
        train_volumes += mr_training_phantoms(phantoms)
        config = replace(config, noise_model="rician")
    elif phantoms:
        extra, extra_spacings = training_phantoms(phantoms)
        train_volumes += extra
        spacings += extra_spacings
    bank = None
    if mode != "super_resolution" and noise == "projection":
        bank = projection_noise_bank(train_volumes, spacings, noise_draws, noise_sigma_hu,
                                     config.seed, log, noise_cache)  # fmt: skip
    run_key = hashlib.sha256(
        json.dumps(
            [str(data), mode, architecture, arch_kwargs, context_slices, modality, asdict(config),
             noise, phantoms, noise_draws, noise_sigma_hu, initialised_from],
            sort_keys=True, default=str,
        ).encode()
    ).hexdigest()  # fmt: skip
    started = time.perf_counter()
    train(network, card, train_volumes, config, mode, output, on_step, noise_bank=bank,
          log_dir=log_dir, run_key=run_key)  # fmt: skip
    seconds = time.perf_counter() - started
    evaluate = (
        _evaluate_sr
        if mode == "super_resolution"
        else _evaluate_mr_denoiser
        if mr
        else _evaluate_denoiser
    )
    metrics = evaluate(network, card, volumes.held_out)
    card = ModelCard(
        **{
            **asdict(card),
            "training": {
                "command": command,
                "data": _data_statement(data, phantoms, mr),
                "noise": f"Rician, σ {config.rician_sigma} of the normalised 99.5th percentile"
                if mr
                else "image-domain FBP-shaped noise"
                if noise == "image" or mode == "super_resolution"
                else f"projection-domain quarter-dose simulation, added σ {noise_sigma_hu} HU "
                f"x scale {config.noise_scale}, {noise_draws} draws per slice",
                "config": asdict(config),
                "seconds": round(seconds, 1),
                "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                "torch": torch.__version__,
                **({"initialised_from": initialised_from} if initialised_from else {}),
            },
            "metrics": metrics,
        }
    )
    return save_checkpoint(output, network, card)


def _data_statement(data: Path | None, phantoms: int, mr: bool) -> str:
    parts = []
    if data is not None:
        parts.append(f"{data.name}: first 75% of slices of each series (last 25% held out)")
    if phantoms:
        seeds = "6000+, 256x256 brain-like MR" if mr else "5000+"
        parts.append(f"{phantoms} training phantoms (seeds {seeds})")
    return "; ".join(parts)
