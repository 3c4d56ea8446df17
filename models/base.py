"""The contract every enhancement model follows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

Task = Literal["denoise", "super_resolution", "diffusion", "identity"]
Spacing = tuple[float, float, float]
# progress(done, total): called after each slice or batch of slices.
ProgressCallback = Callable[[int, int], None]
# ready(first, values): the final values of slices first, first + 1, ... (a read-only view
# that no later step changes), called in slice order as they are done.
SlicesReady = Callable[[int, np.ndarray], None]


@dataclass(frozen=True)
class ModelInfo:
    """What the node records about the model that made a derived series.

    ``weights_sha256`` identifies the exact weights (or, for a classical filter, its
    parameters): the node derives the equipment's DeviceUID from it, so any change of
    weights gives a new DeviceUID. ``strength`` is the share of the model's change that the
    enhancer applies (1: all of it); with the weights and ``variant`` it decides the
    derived series' UIDs.
    """

    name: str
    version: str
    task: Task
    modality: str
    description: str
    weights_sha256: str
    scale_factor: int = 1
    strength: float = 1.0
    # How the weights were run when that changes the pixels beyond strength (e.g. a
    # diffusion preset's sampling steps, "steps=1/10"); part of the derived UIDs.
    variant: str = ""


class Enhancer(Protocol):
    """A model that maps a volume (z, y, x) in modality units to an enhanced volume."""

    @property
    def info(self) -> ModelInfo:
        """Name, version, task and checksum of the model."""
        ...

    def __call__(
        self, volume: np.ndarray, spacing_mm: Spacing, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, Spacing]:
        """Return the enhanced volume (float32) and its voxel spacing (z, y, x) in mm."""
        ...


def parameters_sha256(name: str, parameters: Mapping[str, object]) -> str:
    """A stable checksum of a parameterised filter, standing in for a weights checksum."""
    canonical = json.dumps({"name": name, **parameters}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@runtime_checkable
class StochasticEnhancer(Enhancer, Protocol):
    """An enhancer that may draw noise (a diffusion sampler): other seeds, other outputs."""

    @property
    def stochastic(self) -> bool:
        """Whether other seeds give other outputs."""
        ...

    @property
    def reduced_steps(self) -> bool:
        """Whether the output is sampled in fewer steps than the full sampler runs, so it
        is not one of the sampler's own draws (draw 0 is)."""
        ...

    def resample(
        self, volume: np.ndarray, spacing_mm: Spacing, draw: int, index: int | None
    ) -> np.ndarray:
        """Slice ``index`` of ``volume`` (None: all of it) enhanced again with draw ``draw``
        of the full sampler (``draw`` ≥ 0; 0: the sampler's own seed)."""
        ...


@runtime_checkable
class StreamingEnhancer(Enhancer, Protocol):
    """An enhancer that can hand over finished slices while it computes the rest, so
    building and writing the derived instances overlaps the model."""

    def enhance_streaming(
        self,
        volume: np.ndarray,
        spacing_mm: Spacing,
        ready: SlicesReady,
        progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, Spacing]:
        """As ``__call__``, and ``ready`` with each run of finished slices, in order; every
        slice is handed over exactly once before this returns."""
        ...
