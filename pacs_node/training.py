"""`pacs-node train`: read DICOM training data, train a zoo network, evaluate, write its card."""

from __future__ import annotations

import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from pydicom.errors import InvalidDicomError

from models.checkpoint import ModelCard, save_checkpoint
from models.classical import AnisotropicDiffusionFilter
from models.engine import EngineOptions, NetworkEnhancer, bicubic_upsample
from models.metrics import FULL_WINDOW, SOFT_TISSUE_WINDOW, psnr, rmse
from models.networks import build_network
from models.noise import ct_like_noise
from models.train import Mode, StepCallback, TrainConfig, degrade_for_sr, normalise, train
from pacs_node.dicom.classify import series_skip_reason
from pacs_node.dicom.volume import load_series


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
        by_series: dict[str, list[Path]] = defaultdict(list)
        headers: dict[str, list[pydicom.Dataset]] = defaultdict(list)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                continue
            if "SeriesInstanceUID" in ds:
                by_series[str(ds.SeriesInstanceUID)].append(path)
                headers[str(ds.SeriesInstanceUID)].append(ds)
        train_part, held_part, spacings = [], [], []
        for uid, paths in by_series.items():
            if series_skip_reason(headers[uid]) is not None or len(paths) < 8:
                continue
            volume = load_series(paths)
            values = volume.values
            spacings.append(volume.spacing_mm[1])
            cut = round(len(values) * (1 - held_out_fraction))
            train_part.append(values[:cut])
            held_part.append(values[cut:])
    if not train_part:
        raise ValueError(f"no enhanceable series with at least 8 slices under {source}")
    return TrainingData(source.name, train_part, held_part, spacings)


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
    data: Path,
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
    on_step: StepCallback | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train, evaluate on the held-out slices and write ``<output>/<name>.{safetensors,json}``."""
    torch.manual_seed(config.seed)
    volumes = load_volumes(data)
    log(f"data: {len(volumes.train)} series, {sum(len(v) for v in volumes.train)} training slices")
    network = build_network(architecture, **arch_kwargs)
    scale = int(getattr(network, "scale", 1))
    card = ModelCard(
        name=name,
        version=version,
        task="super_resolution" if mode == "super_resolution" else "denoise",
        modality=modality,
        architecture=architecture,
        arch_kwargs=arch_kwargs,
        context_slices=context_slices,
        scale_factor=scale,
        description=description,
    )
    started = time.perf_counter()
    train(network, card, volumes.train, config, mode, output, on_step)
    seconds = time.perf_counter() - started
    evaluate = _evaluate_sr if mode == "super_resolution" else _evaluate_denoiser
    metrics = evaluate(network, card, volumes.held_out)
    card = ModelCard(
        **{
            **asdict(card),
            "training": {
                "command": command,
                "data": f"{data.name}: first 75% of slices of each series (last 25% held out)",
                "config": asdict(config),
                "seconds": round(seconds, 1),
                "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
                "torch": torch.__version__,
            },
            "metrics": metrics,
        }
    )
    return save_checkpoint(output, network, card)
