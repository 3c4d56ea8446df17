"""`pacs-node serve` refuses to start, naming the file, when the preset's checkpoint is
missing or corrupt (at start-up, not at the first job)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from models.registry import WEIGHTS_DIR
from tests.integration.node import BIN, node_environment
from tests.integration.peers import free_port

pytestmark = pytest.mark.integration


def _serve(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = node_environment(
        tmp_path / "data", port=str(free_port()), http_port=str(free_port()), **settings
    )
    return subprocess.run(
        [str(BIN / "pacs-node"), "serve"], env=env, capture_output=True, text=True, timeout=120
    )


def test_missing_weights_stop_start_up_with_the_file_named(tmp_path: Path) -> None:
    presets = tmp_path / "presets.yaml"
    presets.write_text("ghost:\n  description: x\n  modality: CT\n  model: ghost-model\n")
    result = _serve(tmp_path, preset="ghost", models__presets_file=str(presets))
    assert result.returncode == 1
    assert "cannot start" in result.stdout and "ghost-model.json" in result.stdout


def test_corrupt_weights_stop_start_up_with_the_file_named(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    for path in WEIGHTS_DIR.glob("ct-denoise-dncnn-s.*"):
        shutil.copy(path, weights / path.name)
    damaged = weights / "ct-denoise-dncnn-s.safetensors"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    result = _serve(tmp_path, preset="ct-denoise-legacy", models__weights_dir=str(weights))
    assert result.returncode == 1
    assert "corrupt" in result.stdout and "ct-denoise-dncnn-s.safetensors" in result.stdout
