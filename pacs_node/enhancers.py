"""Enhancers for presets, built from the settings and kept loaded per process."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterable

from pydantic import ValidationError

from models.base import Enhancer
from models.checkpoint import CheckpointError
from models.engine import EngineOptions
from models.registry import ModelRegistry, Preset, PresetError, build_enhancer, load_presets
from pacs_node.errors import ConfigError, ModelError
from pacs_node.qa import Gate
from pacs_node.settings import QALimits, Settings


class EnhancerCache:
    """Loads each preset's model once (weights verified) and hands out the same instance."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        try:
            self.presets: dict[str, Preset] = load_presets(settings.models.presets_path)
        except PresetError as exc:
            raise ConfigError(str(exc)) from exc
        self._qa_limits = {name: self._limits(preset) for name, preset in self.presets.items()}
        extra = [settings.models.weights_dir] if settings.models.weights_dir else []
        self.registry = ModelRegistry(extra)
        models = settings.models
        self.options = EngineOptions(
            device=settings.device,
            batch_size=models.batch_size,
            max_batch_pixels=models.max_batch_pixels,
            tile_size=models.tile_size,
            tile_overlap=models.tile_overlap,
            precision=models.precision,
            compile=models.compile,
        )
        self._loaded: dict[str, Enhancer] = {}
        self._lock = threading.Lock()

    def _limits(self, preset: Preset) -> QALimits:
        try:
            return self._settings.qa.limits.with_overrides(preset.qa)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                 for e in exc.errors())  # fmt: skip
            raise ConfigError(f"preset {preset.name}: invalid qa limits: {problems}") from exc

    def qa_limits(self, name: str) -> QALimits:
        """The QA gate's limits for preset ``name``: the settings' with its overrides."""
        self.preset(name)
        return self._qa_limits[name]

    def gate(self, name: str) -> Gate | None:
        """The QA gate for preset ``name``'s outputs (None when ``qa.enabled`` is off)."""
        qa = self._settings.qa
        return (
            Gate(self.qa_limits(name), qa.max_slices, qa.diffusion_samples) if qa.enabled else None
        )

    def preset(self, name: str) -> Preset:
        """The preset ``name``; ``ModelError`` listing the known ones otherwise."""
        try:
            return self.presets[name]
        except KeyError:
            known = ", ".join(sorted(self.presets))
            raise ModelError(f"unknown preset {name!r}; available: {known}") from None

    def refusal(self, name: str) -> str | None:
        """Why preset ``name`` may not run here (experimental, not allowed), or None."""
        preset = self.preset(name)
        if preset.experimental and not self._settings.models.allow_experimental:
            return (
                f"preset {name} is experimental: {preset.experimental}; set "
                "models.allow_experimental (PACS_NODE_MODELS__ALLOW_EXPERIMENTAL=true) to use it"
            )
        return None

    def check_usable(self, names: Iterable[str]) -> None:
        """Every preset in ``names`` may run here (start-up: the routing's presets)."""
        for name in sorted(set(names)):
            reason = self.refusal(name)
            if reason is not None:
                raise ConfigError(reason)

    def get(self, name: str, strength: str | None = None) -> Enhancer:
        """The loaded enhancer of preset ``name`` at ``strength`` (low | medium | high; None:
        the configured override, else the preset's own).

        Raises
        ------
        ModelError
            Unknown preset, or its checkpoint is missing or corrupt (naming the file).
        """
        refused = self.refusal(name)
        if refused is not None:
            raise ModelError(refused)
        chosen = strength or self._settings.models.strength
        key = f"{name}:{chosen or ''}"
        with self._lock:
            if key not in self._loaded:
                preset = self.preset(name)
                try:
                    self._loaded[key] = build_enhancer(preset, self.registry, self.options, chosen)  # type: ignore[arg-type]
                except (PresetError, CheckpointError, RuntimeError) as exc:
                    raise ModelError(str(exc)) from exc
            return self._loaded[key]

    def check_startup(self) -> Enhancer:
        """Load the configured default preset, so a bad checkpoint stops start-up."""
        try:
            return self.get(self._settings.preset)
        except ModelError as exc:
            raise ConfigError(f"preset {self._settings.preset!r} cannot be used: {exc}") from exc


def _startup_problem(settings: Settings) -> str | None:
    try:
        EnhancerCache(settings).check_startup()
    except ConfigError as exc:
        return str(exc)
    return None


def check_startup_isolated(settings: Settings) -> None:
    """:meth:`EnhancerCache.check_startup` in a fresh (spawned) process.

    For a process that forks workers afterwards (Celery's prefork pool): PyTorch's OpenMP
    thread pool is not fork-safe, and a child forked after the parent ran tensor work
    (loading the weights does) hangs in its first tensor operation.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        problem = pool.apply(_startup_problem, (settings,))
    if problem is not None:
        raise ConfigError(problem)
