"""The node installed from its wheel works without a source checkout: the configuration,
presets, model weights, migrations and dashboard templates travel with the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def test_the_wheel_runs_outside_the_checkout(tmp_path: Path) -> None:
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(tmp_path / "dist"), str(ROOT)], cwd=tmp_path)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("pacs_enhancement_node-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    # The project's dependencies come from the test environment's site-packages (a path,
    # not a site directory: its editable-install hook onto the checkout is not loaded).
    site = Path(_run([str(venv / "bin" / "python"), "-c",
                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
                .strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
         cwd=tmp_path)  # fmt: skip
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_NODE_")}
    env.update(PACS_NODE_DATA_DIR=str(away / "var"), PYTHONPATH="", COLUMNS="250")
    where = json.loads(_run([str(venv / "bin" / "python"), "-c",
        "import json, pacs_node, pacs_node.settings as s; "
        "print(json.dumps([pacs_node.__file__, str(s.DEFAULT_CONFIG)]))"], away, env))  # fmt: skip
    assert not where[0].startswith(str(ROOT)), "imported the checkout, not the wheel"
    assert where[1] == str(venv / "share" / "pacs-node" / "configs" / "default.yaml")
    cli = str(venv / "bin" / "pacs-node")
    _run([cli, "db", "upgrade"], away, env)
    listed = _run([cli, "models", "list"], away, env)
    assert "ct-denoise" in listed and "ct-denoise-resunet-f12" in listed
    offline = _run([cli, "enhance", "--help"], away, env)
    assert "preset" in offline
