"""The checkpoint format: safetensors + JSON card, verified on load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import (
    CheckpointError,
    ModelCard,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from models.networks import ARCHITECTURES, build_network

SMALL_KWARGS = {
    "dncnn": {"in_channels": 3, "features": 8, "depth": 3},
    "redcnn": {"features": 8},
    "resunet": {"features": 8, "depth": 2},
    "cae": {},
    "unet_ae": {},
    "vae": {},
    "resnet_ae": {},
    "sr_light": {"features": 8},
    "sr_pixelshuffle": {},
    "cold_diffusion": {"steps": 2},
}


def _card(architecture: str, kwargs: dict[str, object], **changes: object) -> ModelCard:
    network = build_network(architecture, **kwargs)
    fields: dict[str, object] = {
        "name": f"test-{architecture}",
        "version": "0.0.1",
        "task": str(getattr(network, "task", "denoise")),
        "modality": "CT",
        "architecture": architecture,
        "arch_kwargs": kwargs,
        "context_slices": int(kwargs.get("in_channels", 1)),  # type: ignore[call-overload]
        "scale_factor": int(getattr(network, "scale", 1)),
    }
    fields.update(changes)
    return ModelCard(**fields)  # type: ignore[arg-type]


def test_every_architecture_is_registered_and_tested() -> None:
    assert set(SMALL_KWARGS) == set(ARCHITECTURES)


@pytest.mark.parametrize("architecture", sorted(SMALL_KWARGS))
def test_round_trip_gives_identical_outputs(tmp_path: Path, architecture: str) -> None:
    kwargs = SMALL_KWARGS[architecture]
    torch.manual_seed(0)
    network = build_network(architecture, **kwargs).eval()
    for parameter in network.parameters():  # perturb, so zero-initialised heads matter too
        parameter.data.add_(0.01 * torch.randn_like(parameter))
    card_path = save_checkpoint(tmp_path, network, _card(architecture, kwargs))
    loaded, card = load_checkpoint(card_path)
    assert card.weights_file == f"test-{architecture}.safetensors"
    assert len(card.weights_sha256) == 64
    x = torch.rand(1, int(kwargs.get("in_channels", 1)), 32, 32)  # type: ignore[call-overload]
    with torch.inference_mode():
        assert torch.equal(network(x), loaded(x))
    assert not loaded.training


def test_the_same_tensors_always_give_the_same_file(tmp_path: Path) -> None:
    # The safetensors writer orders metadata differently from call to call; the card's
    # checksum must not depend on that, or a retrain could never match a shipped file.
    kwargs = SMALL_KWARGS["dncnn"]
    network = build_network("dncnn", **kwargs)
    card = _card("dncnn", kwargs)
    checksums = {
        read_card(save_checkpoint(tmp_path / str(k), network, card)).weights_sha256
        for k in range(8)
    }
    assert len(checksums) == 1
    weights = tmp_path / "0" / "test-dncnn.safetensors"
    length = int.from_bytes(weights.read_bytes()[:8], "little")
    header = json.loads(weights.read_bytes()[8 : 8 + length])
    assert list(header["__metadata__"]) == ["name", "version"]
    restored, _ = load_checkpoint(tmp_path / "0" / "test-dncnn.json")
    assert all(
        torch.equal(a, b)
        for a, b in zip(network.state_dict().values(), restored.state_dict().values(), strict=True)
    )


def test_corrupt_weights_are_named(tmp_path: Path) -> None:
    kwargs = SMALL_KWARGS["dncnn"]
    card_path = save_checkpoint(tmp_path, build_network("dncnn", **kwargs), _card("dncnn", kwargs))
    weights = tmp_path / "test-dncnn.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"test-dncnn\.safetensors.*corrupt"):
        load_checkpoint(card_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(card_path)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    kwargs = SMALL_KWARGS["dncnn"]
    card_path = save_checkpoint(tmp_path, build_network("dncnn", **kwargs), _card("dncnn", kwargs))
    card = read_card(card_path)
    wrong = dataclasses.replace(card, arch_kwargs={"in_channels": 3, "features": 16, "depth": 3})
    card_path.write_text(wrong.to_json())
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(card_path)


def test_invalid_cards_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x"}')
    with pytest.raises(CheckpointError, match=r"bad\.json is invalid"):
        read_card(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_card(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="context_slices"):
        _card("dncnn", SMALL_KWARGS["dncnn"], context_slices=2)
    with pytest.raises(ValueError, match="hu_window"):
        _card("dncnn", SMALL_KWARGS["dncnn"], hu_window=(100.0, 0.0))
