"""The project's checkpoint format: safetensors weights plus a JSON model card."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.base import ModelInfo, Task
from models.networks import build_network

CARD_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".safetensors"
NORMALISATIONS = ("window", "volume")


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or inconsistent with its card; names the file."""


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild a network and to judge its weights.

    ``normalisation`` says how values reach the network. ``window`` (CT): the network sees
    ``(value - lo) / (hi - lo)`` with ``(lo, hi) = hu_window``; a power-of-two width keeps
    the mapping exact in float32, so a network that is an identity returns the input values
    unchanged. ``volume`` (MR, whose units are arbitrary): ``value / scale``, ``scale`` the
    smallest power of two at or above the volume's 99.5th percentile.
    """

    name: str
    version: str
    task: Task
    modality: str
    architecture: str
    arch_kwargs: dict[str, Any]
    hu_window: tuple[float, float] = (-1024.0, 3072.0)
    normalisation: str = "window"
    context_slices: int = 1
    scale_factor: int = 1
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_file: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        if self.task not in get_args(Task):
            raise ValueError(f"task {self.task!r} is not one of {get_args(Task)}")
        if self.context_slices < 1 or self.context_slices % 2 == 0:
            raise ValueError(f"context_slices must be odd and >= 1, got {self.context_slices}")
        low, high = self.hu_window
        if not high > low:
            raise ValueError(f"hu_window must be (low, high) with high > low, got {self.hu_window}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {NORMALISATIONS}, got {self.normalisation!r}"
            )
        if self.scale_factor < 1:
            raise ValueError(f"scale_factor must be >= 1, got {self.scale_factor}")

    def intensity_range(self, volume: np.ndarray) -> tuple[float, float]:
        """The (lo, hi) mapped to [0, 1] for the network's input, for this ``volume``."""
        if self.normalisation == "window":
            return self.hu_window
        level = float(np.percentile(volume, 99.5)) if volume.size else 1.0
        return 0.0, float(2.0 ** math.ceil(math.log2(max(level, 1.0))))

    def output_range(self, volume: np.ndarray) -> tuple[float, float]:
        """The valid (min, max) of the network's output values for this input ``volume``.

        CT: the HU range of the window (stored values beyond it are not HU a scanner
        writes). MR: the input's own range, which a denoiser has no reason to leave.
        """
        if self.normalisation == "window":
            return self.hu_window[0], self.hu_window[1] - 1
        return float(volume.min()), float(volume.max())

    def to_json(self) -> str:
        """The card as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card; unknown or missing keys are errors."""
        data = json.loads(text)
        data["hu_window"] = tuple(data["hu_window"])
        return cls(**data)

    @property
    def info(self) -> ModelInfo:
        """The summary the node records as provenance."""
        return ModelInfo(
            name=self.name,
            version=self.version,
            task=self.task,
            modality=self.modality,
            description=self.description or f"{self.architecture} network",
            weights_sha256=self.weights_sha256,
            scale_factor=self.scale_factor,
        )


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical_metadata_order(weights: Path) -> None:
    """Rewrite a safetensors header with its ``__metadata__`` keys sorted, in place.

    The safetensors writer keeps metadata in a hash map whose iteration order changes from
    call to call, so the same tensors could give two different files (and checksums). The
    header is JSON of a fixed length (padded with spaces); reordering the keys keeps its
    length and leaves the tensor data untouched.
    """
    with weights.open("r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        raw = handle.read(length)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not metadata:
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) != len(raw.rstrip(b" ")):
            raise CheckpointError(f"cannot canonicalise the header of {weights}")
        handle.seek(8)
        handle.write(text.ljust(length, b" "))


def save_checkpoint(directory: Path, network: nn.Module, card: ModelCard) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` (with the weights' SHA-256).

    Returns
    -------
    Path
        The written card.
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{card.name}{WEIGHTS_SUFFIX}"
    state = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    save_file(state, str(weights), metadata={"name": card.name, "version": card.version})
    _canonical_metadata_order(weights)  # same tensors, same bytes, same SHA-256
    final = dataclasses.replace(
        card, weights_file=weights.name, weights_sha256=file_sha256(weights)
    )
    card_path = directory / f"{card.name}{CARD_SUFFIX}"
    card_path.write_text(final.to_json())
    return card_path


def read_card(card_path: Path) -> ModelCard:
    """Read and validate a model card (not its weights)."""
    try:
        return ModelCard.from_json(card_path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"model card {card_path} does not exist") from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"model card {card_path} is invalid: {exc}") from exc


def load_checkpoint(
    card_path: Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the network of a card and load its verified weights, in eval mode.

    Raises
    ------
    CheckpointError
        Naming the file: card or weights missing, checksum mismatch (a corrupt or
        replaced file), or weights that do not fit the architecture.
    """
    card = read_card(card_path)
    weights = card_path.parent / card.weights_file
    if not card.weights_file or not weights.is_file():
        raise CheckpointError(f"weights file {weights} named by {card_path} does not exist")
    actual = file_sha256(weights)
    if actual != card.weights_sha256:
        raise CheckpointError(
            f"weights file {weights} has SHA-256 {actual[:16]}..., its card {card_path} "
            f"expects {card.weights_sha256[:16]}...: the file is corrupt or was replaced"
        )
    try:
        network = build_network(card.architecture, **card.arch_kwargs)
        state = load_file(str(weights), device="cpu")
        network.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"cannot load {weights} into {card.architecture}: {exc}") from exc
    return network.to(device).eval(), card


def initialise_from_checkpoint(
    network: nn.Module,
    card_path: Path,
    architecture: str,
    arch_kwargs: dict[str, Any],
    context_slices: int,
    modality: str,
) -> dict[str, str]:
    """Load the checkpoint of ``card_path`` into ``network`` (``--init-from`` of the
    training commands); its provenance for the card.

    Raises
    ------
    ValueError
        If the checkpoint cannot be loaded (missing, corrupt) or does not fit: another
        modality or slice context, the same architecture with tensors of other shapes, or
        another architecture that the network's ``initialise_from`` does not take.
    """
    try:
        source, card = load_checkpoint(card_path)
    except CheckpointError as exc:
        raise ValueError(f"--init-from: {exc}") from exc
    if card.modality.upper() != modality.upper() or card.context_slices != context_slices:
        raise ValueError(
            f"--init-from {card_path}: {card.modality} with {card.context_slices} slices does "
            f"not fit a {modality} network with {context_slices} slices"
        )
    initialise = getattr(network, "initialise_from", None)
    try:
        if card.architecture == architecture:  # fine-tuning: the state must fit exactly
            network.load_state_dict(source.state_dict(), strict=True)
        elif callable(initialise):
            initialise(source)
        else:
            raise ValueError("it has no way to start from another architecture")
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"--init-from {card_path}: a {card.architecture} {card.arch_kwargs} checkpoint "
            f"does not fit a {architecture} {arch_kwargs} network: {exc}"
        ) from exc
    return {"name": card.name, "version": card.version, "sha256": card.weights_sha256}
