"""Presets and the model registry: lookup order, missing weights, strength, CPU variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, ModelCard, save_checkpoint
from models.classical import GaussianFilter
from models.engine import EngineOptions, NetworkEnhancer
from models.networks import build_network
from models.registry import (
    WEIGHTS_DIR,
    ModelRegistry,
    Preset,
    PresetError,
    build_enhancer,
    load_presets,
)

PRESETS_FILE = Path(__file__).resolve().parents[2] / "configs" / "presets.yaml"


def _save(directory: Path, name: str, version: str = "1.0") -> Path:
    kwargs = {"in_channels": 1, "features": 8, "depth": 3}
    card = ModelCard(name=name, version=version, task="denoise", modality="CT",
                     architecture="dncnn", arch_kwargs=kwargs)  # fmt: skip
    return save_checkpoint(directory, build_network("dncnn", **kwargs), card)


def test_shipped_presets_file_defines_the_documented_names() -> None:
    presets = load_presets(PRESETS_FILE)
    networks = {
        "ct-denoise",
        "ct-denoise-fast",
        "ct-denoise-legacy",
        "ct-sr2x",
        "ct-diffusion",
        "mr-denoise",
    }
    assert networks <= set(presets)
    assert {"gaussian", "anisotropic-diffusion", "identity"} <= set(presets)
    assert all(p.description for p in presets.values())


def test_invalid_presets_are_errors_naming_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "presets.yaml"
    path.write_text("broken:\n  description: x\n  modality: CT\n")
    with pytest.raises(PresetError, match=r"'broken'.*exactly one of"):
        load_presets(path)
    path.write_text(
        "typo:\n  description: x\n  modality: CT\n  classical: gaussian\n  strenght: low\n"
    )
    with pytest.raises(PresetError, match="'typo'"):
        load_presets(path)
    path.write_text("s:\n  description: x\n  modality: CT\n  model: m\n  strength: max\n")
    with pytest.raises(PresetError, match="low, medium or high"):
        load_presets(path)


def test_registry_prefers_the_configured_folder(tmp_path: Path) -> None:
    _save(tmp_path, "site-model", version="9.9")
    registry = ModelRegistry([tmp_path])
    assert registry.dirs == [tmp_path, WEIGHTS_DIR]
    assert registry.card_path("site-model") == tmp_path / "site-model.json"
    network, card = registry.load("site-model")
    assert card.version == "9.9" and not network.training
    with pytest.raises(CheckpointError, match=r"no model card absent\.json"):
        registry.card_path("absent")
    (tmp_path / "broken.json").write_text("{")
    cards = registry.cards()
    assert isinstance(cards["broken"][1], CheckpointError)
    assert isinstance(cards["site-model"][1], ModelCard)


def test_build_enhancer_for_classical_and_network_presets(tmp_path: Path) -> None:
    _save(tmp_path, "m")
    registry = ModelRegistry([tmp_path])
    classical = build_enhancer(
        Preset("g", "d", "any", classical="gaussian", parameters={"sigma_mm": 1.0}), registry
    )
    assert isinstance(classical, GaussianFilter) and classical.sigma_mm == 1.0
    preset = Preset("n", "d", "CT", model="m", strength="medium")
    network = build_enhancer(preset, registry, EngineOptions(device="cpu"))
    assert isinstance(network, NetworkEnhancer) and network.strength == 0.75
    assert build_enhancer(preset, registry, EngineOptions(device="cpu"), "low").strength == 0.5  # type: ignore[attr-defined]
    with pytest.raises(PresetError, match=r"preset .x.: no model card missing\.json"):
        build_enhancer(Preset("x", "d", "CT", model="missing"), registry)


def test_cpu_variant_is_chosen_without_a_gpu() -> None:
    preset = Preset("p", "d", "CT", model="big", cpu_model="small")
    assert preset.model_for("cpu") == "small"
    expected = "big" if torch.cuda.is_available() else "small"
    assert preset.model_for("auto") == expected
    assert Preset("q", "d", "CT", model="only").model_for("cpu") == "only"


def test_network_enhancer_of_a_registered_model_runs(tmp_path: Path) -> None:
    _save(tmp_path, "m")
    enhancer = build_enhancer(
        Preset("n", "d", "CT", model="m"), ModelRegistry([tmp_path]), EngineOptions(device="cpu")
    )
    volume = np.full((2, 32, 32), 40.0, dtype=np.float32)
    out, _ = enhancer(volume, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, volume)  # an untrained DnCNN is the identity
    assert enhancer.info.name == "m" and len(enhancer.info.weights_sha256) == 64


def _save_diffusion(directory: Path, name: str = "diff") -> None:
    kwargs = {"in_channels": 1, "steps": 4, "noise_scale": 0.02, "features": 8, "depth": 2,
              "restorer": "resunet"}  # fmt: skip
    network = build_network("cold_diffusion", **kwargs)
    with torch.no_grad():  # a restorer that reads x_t, so the number of steps matters
        torch.manual_seed(0)
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    card = ModelCard(name=name, version="1.0", task="diffusion", modality="CT",
                     architecture="cold_diffusion", arch_kwargs=kwargs)  # fmt: skip
    save_checkpoint(directory, network, card)


def test_a_network_preset_sets_the_sampling_steps_of_a_diffusion_model(tmp_path: Path) -> None:
    _save_diffusion(tmp_path)
    registry, options = ModelRegistry([tmp_path]), EngineOptions(device="cpu")
    volume = np.random.default_rng(0).normal(40.0, 30.0, (3, 32, 32)).astype(np.float32)
    one = build_enhancer(Preset("d1", "d", "CT", model="diff", parameters={"steps": 1}),
                         registry, options)  # fmt: skip
    full = build_enhancer(Preset("d", "d", "CT", model="diff"), registry, options)
    assert one.info.description.endswith("sampled in 1 of 4 steps")
    assert "sampled in" not in full.info.description
    assert one.info.weights_sha256 == full.info.weights_sha256
    out_one, _ = one(volume, (1.0, 1.0, 1.0))
    out_full, _ = full(volume, (1.0, 1.0, 1.0))
    assert np.abs(out_one - out_full).max() > 0.01  # the steps are applied
    again, _ = build_enhancer(Preset("d1", "d", "CT", model="diff", parameters={"steps": 1}),
                              registry, options)(volume, (1.0, 1.0, 1.0))  # fmt: skip
    np.testing.assert_array_equal(again, out_one)
    # Other samples (the QA gate's spread) still run every trained level.
    assert isinstance(one, NetworkEnhancer) and one.stochastic
    np.testing.assert_array_equal(one.resample(volume, (1.0, 1.0, 1.0), 1, 1),
                                  full.resample(volume, (1.0, 1.0, 1.0), 1, 1))  # fmt: skip


def test_sampling_steps_are_refused_where_they_cannot_apply(tmp_path: Path) -> None:
    _save_diffusion(tmp_path)
    _save(tmp_path, "cnn")
    registry = ModelRegistry([tmp_path])
    with pytest.raises(PresetError, match="steps 5 exceed the 4 levels diff was trained with"):
        build_enhancer(Preset("d", "d", "CT", model="diff", parameters={"steps": 5}), registry)
    with pytest.raises(PresetError, match="steps apply to a diffusion sampler; cnn is not one"):
        build_enhancer(Preset("c", "d", "CT", model="cnn", parameters={"steps": 1}), registry)
    for bad in ("steps: 0", "steps: two", "steps: true", "seed: 3"):
        path = tmp_path / "presets.yaml"
        path.write_text(f"p:\n  description: x\n  modality: CT\n  model: diff\n"
                        f"  parameters: {{{bad}}}\n")  # fmt: skip
        with pytest.raises(PresetError, match="'p'"):
            load_presets(path)
