"""Model cards found on disk, and the named presets users select.

Cards are looked up in the repository's ``models/weights`` folder and in any extra
folders the caller passes; nothing is ever fetched from the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from models.base import Enhancer
from models.checkpoint import CARD_SUFFIX, CheckpointError, ModelCard, load_checkpoint, read_card
from models.classical import AnisotropicDiffusionFilter, GaussianFilter, IdentityFilter
from models.engine import EngineOptions, NetworkEnhancer, resolve_device

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

Strength = Literal["low", "medium", "high"]
# How much of the network's change is applied (vendors' low / medium / high).
STRENGTH_BLEND: dict[str, float] = {"low": 0.5, "medium": 0.75, "high": 1.0}

_CLASSICAL = {
    "anisotropic-diffusion": AnisotropicDiffusionFilter,
    "gaussian": GaussianFilter,
    "identity": IdentityFilter,
}


class PresetError(Exception):
    """An unknown preset, or one whose model cannot be loaded; the message says which."""


@dataclass(frozen=True)
class Preset:
    """A named enhancement: a network (with a CPU variant) or a classical filter."""

    name: str
    description: str
    modality: str
    model: str | None = None
    cpu_model: str | None = None
    classical: str | None = None
    # A classical filter's arguments; for a network preset only ``steps``: the sampling
    # steps of a diffusion model (1 to the card's trained levels; default all of them).
    parameters: dict[str, Any] = field(default_factory=dict)
    strength: Strength = "high"
    # Why the preset is experimental (not shown to help on real data), or None.
    experimental: str | None = None
    # The node's QA gate limits this preset overrides (name: number, or None to measure a
    # figure without judging it); the node validates the names.
    qa: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.classical is None):
            raise ValueError(f"preset {self.name!r} needs exactly one of 'model' or 'classical'")
        if self.classical is not None and self.classical not in _CLASSICAL:
            known = ", ".join(sorted(_CLASSICAL))
            raise ValueError(f"preset {self.name!r}: unknown classical filter; known: {known}")
        if not isinstance(self.parameters, dict):
            raise ValueError(f"preset {self.name!r}: parameters must be a mapping")
        if self.model is not None:
            unknown = sorted(set(self.parameters) - {"steps"})
            if unknown:
                raise ValueError(f"preset {self.name!r}: a network preset takes only the "
                                 f"parameter 'steps', not {', '.join(unknown)}")  # fmt: skip
            steps = self.parameters.get("steps", 1)
            if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
                raise ValueError(f"preset {self.name!r}: steps must be a whole number >= 1")
        if self.strength not in STRENGTH_BLEND:
            raise ValueError(f"preset {self.name!r}: strength must be low, medium or high")
        if not isinstance(self.qa, dict) or not all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool))
            for v in self.qa.values()
        ):
            raise ValueError(f"preset {self.name!r}: qa must map limit names to numbers or null")

    def model_for(self, device: str) -> str | None:
        """The card name to run on ``device`` (the CPU variant when there is no GPU)."""
        if self.model is None:
            return None
        if resolve_device(device).type == "cpu" and self.cpu_model:
            return self.cpu_model
        return self.model


def load_presets(path: Path) -> dict[str, Preset]:
    """Read presets from YAML: ``name: {description, modality, model|classical, ...}``."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PresetError(f"cannot read presets file {path}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise PresetError(f"presets file {path} must map preset names to settings")
    presets = {}
    for name, spec in raw.items():
        try:
            presets[str(name)] = Preset(name=str(name), **spec)
        except (TypeError, ValueError) as exc:
            raise PresetError(f"{path}: preset {name!r} is invalid: {exc}") from exc
    return presets


class ModelRegistry:
    """Model cards in the weights folders, first folder winning on duplicate names."""

    def __init__(self, extra_dirs: Sequence[Path] = ()) -> None:
        self.dirs = [*extra_dirs, WEIGHTS_DIR]

    def card_path(self, name: str) -> Path:
        """Path of the card named ``name``, or a ``CheckpointError`` naming where it looked."""
        for directory in self.dirs:
            candidate = directory / f"{name}{CARD_SUFFIX}"
            if candidate.is_file():
                return candidate
        where = ", ".join(str(d) for d in self.dirs)
        raise CheckpointError(f"no model card {name}{CARD_SUFFIX} in {where}")

    def cards(self) -> dict[str, tuple[Path, ModelCard | CheckpointError]]:
        """Every card found, or the error reading it, by name."""
        found: dict[str, tuple[Path, ModelCard | CheckpointError]] = {}
        for directory in reversed(self.dirs):
            for path in sorted(directory.glob(f"*{CARD_SUFFIX}")):
                try:
                    found[path.stem] = (path, read_card(path))
                except CheckpointError as exc:
                    found[path.stem] = (path, exc)
        return found

    def load(self, name: str, device: str = "cpu") -> tuple[Any, ModelCard]:
        """Load and verify one checkpoint."""
        return load_checkpoint(self.card_path(name), device=resolve_device(device))


def build_enhancer(
    preset: Preset,
    registry: ModelRegistry,
    options: EngineOptions | None = None,
    strength: Strength | None = None,
) -> Enhancer:
    """The ready-to-run enhancer of a preset (weights loaded and verified).

    Raises
    ------
    PresetError
        When the preset's checkpoint is missing or corrupt (the message names the file).
    """
    options = options or EngineOptions()
    if preset.classical is not None:
        enhancer: Enhancer = _CLASSICAL[preset.classical](**preset.parameters)
        return enhancer
    name = preset.model_for(options.device)
    assert name is not None
    try:
        network, card = registry.load(name, device=options.device)
    except CheckpointError as exc:
        raise PresetError(f"preset {preset.name!r}: {exc}") from exc
    if "steps" in preset.parameters:
        trained = getattr(network, "steps", None)
        if not callable(getattr(network, "sample", None)) or not isinstance(trained, int):
            raise PresetError(f"preset {preset.name!r}: steps apply to a diffusion sampler; "
                              f"{card.name} is not one")  # fmt: skip
        steps = int(preset.parameters["steps"])
        if steps > trained:
            raise PresetError(f"preset {preset.name!r}: steps {steps} exceed the "
                              f"{trained} levels {card.name} was trained with")  # fmt: skip
        network.sampling_steps = steps
    blend = STRENGTH_BLEND[strength or preset.strength]
    return NetworkEnhancer(network, card, options, strength=blend)
