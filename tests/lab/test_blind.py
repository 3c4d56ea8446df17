"""The blind denoiser's training: exported training sets, time budgets, the GPU driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.blind import TrainingSet, load_training_set, save_training_set
from models.checkpoint import ModelCard, load_checkpoint
from models.networks import build_network
from models.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]


def _body(size: int, hu: float, seed: int) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    image = np.full((size, size), -1024.0, dtype=np.float32)
    image[(xx / (0.4 * size)) ** 2 + (yy / (0.3 * size)) ** 2 < 1] = hu
    rng = np.random.default_rng(seed)
    image[size // 2 - 4 : size // 2 + 4, size // 2 - 4 : size // 2 + 4] += rng.integers(1, 90)
    return image


def _set(path: Path) -> TrainingSet:
    fractional = _body(96, 40.0, 2)
    fractional[40, 40] = 12.25  # not an integer: must stay float32
    training_set = TrainingSet(
        [_body(96, 40.0, 1), fractional], [3.0, 2.9], ["pancreas/a.dcm", "phantom/5000"], "ab" * 32
    )
    save_training_set(training_set, path)
    return training_set


def test_a_training_set_round_trips_bit_for_bit(tmp_path: Path) -> None:
    written = _set(tmp_path / "set.npz")
    loaded = load_training_set(tmp_path / "set.npz")
    assert loaded.names == written.names
    assert loaded.spacings == written.spacings
    assert loaded.manifest_sha256 == written.manifest_sha256
    for before, after in zip(written.images, loaded.images, strict=True):
        assert after.dtype == np.float32
        np.testing.assert_array_equal(after, before)
    with np.load(tmp_path / "set.npz") as raw:  # integer slices are stored compactly
        assert raw["image_0000"].dtype == np.int16
        assert raw["image_0001"].dtype == np.float32
    assert loaded.phantoms == 1
    assert "1 real slices of 1 collections; 1 low-contrast phantoms" in loaded.describe()


def test_a_file_that_is_not_a_training_set_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", values=np.zeros(3))
    with pytest.raises(ValueError, match="not a training set"):
        load_training_set(tmp_path / "other.npz")


def test_training_stops_at_its_deadline_with_weights_on_the_cpu(tmp_path: Path) -> None:
    network = build_network("resunet", in_channels=1, features=4, depth=2)
    card = ModelCard("t", "0.0.1", "denoise", "CT", "resunet",
                     {"in_channels": 1, "features": 4, "depth": 2})  # fmt: skip
    before = [p.detach().clone() for p in network.parameters()]
    steps: list[int] = []
    trained = train(network, card, [_body(64, 40.0, 3)[None]], TrainConfig(steps=50, patch=32,
                    batch_size=2), "denoise", tmp_path, lambda s, t, loss: steps.append(s),
                    device="cpu", stop_at=time.monotonic() - 1.0)  # fmt: skip
    assert steps == [1]  # one step, then the deadline (already past) ends the run
    assert all(p.device.type == "cpu" for p in trained.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trained.parameters(), strict=True))


# On a lent GPU machine there is PyTorch but not the node's stack: the driver must not need it.
_WITHOUT_NODE_STACK = """
import runpy, sys
for name in ("pydicom", "pydantic", "pydantic_settings", "typer", "click", "rich", "celery",
             "sqlalchemy", "pynetdicom", "highdicom", "fastapi"):
    sys.modules[name] = None
sys.argv = ["lab.gpu_ladder", *sys.argv[1:]]
runpy.run_module("lab.gpu_ladder", run_name="__main__", alter_sys=True)
"""


def test_the_gpu_driver_trains_within_its_budget_without_the_node_stack(tmp_path: Path) -> None:
    _set(tmp_path / "set.npz")
    runner = tmp_path / "runner.py"
    runner.write_text(_WITHOUT_NODE_STACK)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(runner), str(tmp_path / "set.npz"), str(tmp_path / "out"),
         "--budget", "25", "--device", "cpu", "--features", "4", "--draws", "2",
         "--batch-size", "2", "--patch", "32", "--noise-cache", str(tmp_path / "bank")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 90  # the budget (25 s) plus start-up, not the steps
    card_path = tmp_path / "out" / "ct-denoise-resunet-f4.json"
    network, card = load_checkpoint(card_path)
    config = card.training["config"]
    assert config["steps"] >= 1 and config["batch_size"] == 2 and config["patch"] == 32
    assert card.training["device"] == "cpu"
    assert card.training["command"].startswith("python -m lab.gpu_ladder ")
    assert "1 real slices" in card.training["data"]
    assert card.arch_kwargs == {"in_channels": 1, "features": 4, "depth": 4}
    log = (tmp_path / "out" / "ct-denoise-resunet-f4.log").read_text()
    assert "steps fit the budget" in log
    assert json.loads(card_path.read_text())["weights_sha256"] == card.weights_sha256
    assert sum(p.numel() for p in network.parameters()) > 0


def test_train_blind_fine_tunes_from_a_card_and_records_it(tmp_path: Path) -> None:
    from lab.blind import train_blind
    from models.checkpoint import save_checkpoint

    kwargs = {"in_channels": 1, "features": 4, "depth": 2}
    start = build_network("resunet", **kwargs)
    with torch.no_grad():
        for parameter in start.parameters():
            parameter.add_(0.01)
    card_path = save_checkpoint(tmp_path / "start", start, ModelCard(
        "start", "0.0.1", "denoise", "CT", "resunet", kwargs))  # fmt: skip
    training_set = _set(tmp_path / "set.npz")
    config = TrainConfig(steps=1, patch=32, batch_size=2, learning_rate=0.0, sampling="slice")
    common = {"description": "", "config": config, "command": "test", "draws": 1,
              "log": lambda _m: None, "init_from": card_path}  # fmt: skip
    out = train_blind(training_set, tmp_path / "out", name="tuned", version="0.0.2",
                      architecture="resunet", arch_kwargs=kwargs, **common)  # fmt: skip
    tuned, card = load_checkpoint(out)
    assert card.training is not None
    assert card.training["init_from"]["name"] == "start"
    # Learning rate 0: the starting weights, unchanged (BatchNorm's running statistics move).
    for a, b in zip(start.parameters(), tuned.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        wider = {**kwargs, "features": 8}
        train_blind(training_set, tmp_path / "other", name="x", version="0",
                    architecture="resunet", arch_kwargs=wider, **common)  # fmt: skip


def test_train_blind_trains_a_diffusion_from_a_blind_resunet(tmp_path: Path) -> None:
    from lab.blind import train_blind
    from models.checkpoint import save_checkpoint

    kwargs = {"in_channels": 1, "features": 4, "depth": 2}
    start = build_network("resunet", **kwargs)
    card_path = save_checkpoint(tmp_path / "start", start, ModelCard(
        "start", "0.0.1", "denoise", "CT", "resunet", kwargs))  # fmt: skip
    training_set = _set(tmp_path / "set.npz")
    config = TrainConfig(steps=2, patch=32, batch_size=2, learning_rate=1e-3, sampling="slice")
    common = {"description": "", "config": config, "command": "test", "draws": 1,
              "log": lambda _m: None, "init_from": card_path}  # fmt: skip
    diffusion = {**kwargs, "steps": 4, "noise_scale": 0.01, "restorer": "resunet"}
    out = train_blind(training_set, tmp_path / "out", name="diff", version="0.0.1",
                      architecture="cold_diffusion", arch_kwargs=diffusion,
                      objective="diffusion", **common)  # fmt: skip
    network, card = load_checkpoint(out)
    assert card.task == "diffusion" and card.training is not None
    assert card.training["init_from"]["name"] == "start" and callable(network.sample)
    # The objective and the architecture must go together, refused before any work.
    for architecture, objective, arch_kwargs in (
        ("resunet", "diffusion", kwargs),
        ("cold_diffusion", "denoise", diffusion),
    ):
        with pytest.raises(ValueError, match="does not train architecture"):
            train_blind(training_set, tmp_path / "x", name="x", version="0",
                        architecture=architecture, arch_kwargs=arch_kwargs,
                        objective=objective, **common)  # type: ignore[arg-type]  # fmt: skip


def test_the_gpu_driver_fine_tunes_and_trains_one_run_at_a_time(tmp_path: Path) -> None:
    from models.checkpoint import save_checkpoint

    _set(tmp_path / "set.npz")
    kwargs = {"in_channels": 1, "features": 4, "depth": 2}
    card = ModelCard("tiny-start", "0.1.0", "denoise", "CT", "resunet", kwargs)
    start = save_checkpoint(tmp_path / "start", build_network("resunet", **kwargs), card)
    runner = tmp_path / "runner.py"
    runner.write_text(_WITHOUT_NODE_STACK)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(runner), str(tmp_path / "set.npz"), str(tmp_path / "out"),
         "--budget", "30", "--device", "cpu", "--features", "4", "--fine-tune", str(start),
         "--one-at-a-time", "--patch-sampling", "device", "--draws", "2", "--batch-size", "2",
         "--patch", "32", "--noise-cache", str(tmp_path / "bank")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    _, tuned = load_checkpoint(tmp_path / "out" / "tiny-start.json")
    assert tuned.arch_kwargs == kwargs and tuned.training["init_from"]["name"] == "tiny-start"
    assert tuned.training["config"]["patch_sampling"] == "device"
    assert tuned.training["config"]["learning_rate"] == 3e-4
    _, scratch = load_checkpoint(tmp_path / "out" / "ct-denoise-resunet-f4.json")
    assert scratch.training["config"]["learning_rate"] == 1e-3
    for name in ("tiny-start", "ct-denoise-resunet-f4"):
        assert "steps fit the budget" in (tmp_path / "out" / f"{name}.log").read_text()


def test_train_blind_recorrupts_with_image_domain_noise_and_records_it(tmp_path: Path) -> None:
    from lab.blind import train_blind

    rng = np.random.default_rng(4)
    noisy = _body(256, 40.0, 3)
    noisy[noisy > -500] += rng.normal(0, 15, int((noisy > -500).sum())).astype(np.float32)
    training_set = TrainingSet([noisy, _body(256, 20.0, 5)], [0.8, 0.8],
                               ["tcga/a.dcm", "phantom/5000"], "cd" * 32)  # fmt: skip
    config = TrainConfig(steps=2, patch=32, batch_size=2, sampling="slice", sigma_hu=(8.0, 100.0),
                         noise_cutoff=(0.25, 0.7), recorrupt_alpha=0.5)  # fmt: skip
    out = train_blind(training_set, tmp_path / "out", name="r2r", version="0", architecture="dncnn",
                      arch_kwargs={"in_channels": 1, "features": 4, "depth": 2}, description="",
                      config=config, command="test", draws=0, log=lambda _m: None)  # fmt: skip
    _, card = load_checkpoint(out)
    assert card.training is not None
    assert card.training["noise"].startswith("image-domain CT-like noise")
    # The real slice's own noise is measured (σ 15 HU); the phantom has none.
    recorded = card.training["recorruption"]
    assert "alpha 0.5" in recorded and "measured on 1 of 1 real slices" in recorded
    sigma = float(recorded.split("sigma ")[1].split("-")[0])
    assert 12.0 < sigma < 18.0
