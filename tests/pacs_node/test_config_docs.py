"""Every setting is documented: the configuration reference is generated from the settings
model and the committed page matches it; configs/default.yaml lists every default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from pacs_node.config_reference import (
    BEGIN,
    END,
    render_markdown,
    sections,
    setting_docs,
    update_document,
)
from pacs_node.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "pacs-node")
SECRETS = {"worker.node_token"}  # set only in the environment, never in a file
PAGE = ROOT / "docs" / "configuration.md"


def _keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Dotted setting names with their defaults (nested sections flattened), read from the
    model itself rather than from its JSON schema, so the two walks check each other."""
    found: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.update(_keys(annotation, f"{prefix}{name}."))
        else:
            found[f"{prefix}{name}"] = field.default
    return found


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_reference_lists_every_setting_once_with_a_meaning() -> None:
    docs = setting_docs()
    keys = [doc.key for doc in docs]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(_keys(Settings))
    assert len(keys) > 50 and "qa.limits.edge_correlation" in keys  # nested sections walked
    undocumented = [doc.key for doc in docs if len(doc.description) < 10]
    assert undocumented == [], f"settings without a description: {undocumented}"
    assert [s.key for s in sections()][:2] == ["", "scp"]
    assert all(s.title and s.settings for s in sections())


def test_rows_carry_the_models_env_name_type_and_default() -> None:
    by_key = {doc.key: doc for doc in setting_docs()}
    port = by_key["port"]
    assert (port.env, port.default, port.type) == (
        "PACS_NODE_PORT",
        "11112",
        "integer, ≥ 1, ≤ 65535",
    )
    lease = by_key["worker.lease_s"]
    assert (lease.env, lease.default, lease.type) == (
        "PACS_NODE_WORKER__LEASE_S",
        "60",
        "number, ≥ 5",
    )
    assert by_key["qa.failure_policy"].type == "send_original | hold | fail"
    assert by_key["worker.node_token"].type == "secret or null"
    assert by_key["tls.port"].type == "integer, ≥ 1, ≤ 65535 or null"
    assert by_key["data_dir"].default == "./var"
    assert by_key["qa.limits.mean_shift_hu"].section == "qa.limits"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("worker.lease_s", "42", 42.0), ("qa.limits.mean_shift_hu", "3", 3.0), ("port", "104", 104)],
)
def test_the_documented_environment_variable_sets_the_setting(
    key: str, value: str, expected: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = next(d for d in setting_docs() if d.key == key)
    monkeypatch.setenv(doc.env, value)
    current: Any = Settings()
    for part in key.split("."):
        current = getattr(current, part)
    assert current == expected


def test_the_committed_page_is_what_the_model_generates() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert update_document(text) == text, (
        "docs/configuration.md is stale: run `pacs-node config reference --write "
        "docs/configuration.md`"
    )
    block = text[text.index(BEGIN) : text.index(END) + len(END)] + "\n"
    assert block == render_markdown()
    for doc in setting_docs():
        assert f"| `{doc.key}`<br>`{doc.env}` |" in block


def test_update_document_needs_one_pair_of_markers() -> None:
    with pytest.raises(ValueError, match="generated block"):
        update_document("# no markers here\n")
    with pytest.raises(ValueError, match="generated block"):
        update_document(f"{END}\n{BEGIN}\n")
    replaced = update_document(f"intro\n{BEGIN}\nold table\n{END}\noutro\n")
    assert replaced.startswith("intro\n") and replaced.endswith("\noutro\n")
    assert "old table" not in replaced and "`ae_title`" in replaced


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        check=False,
    )


def test_config_reference_write_regenerates_a_stale_page(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    page.write_text(f"# Configuration\n\n{BEGIN}\n| stale | row |\n{END}\n", encoding="utf-8")
    result = _cli("config", "reference", "--write", str(page))
    assert result.returncode == 0, result.stderr
    assert page.read_text(encoding="utf-8") == f"# Configuration\n\n{render_markdown()}"
    broken = tmp_path / "broken.md"
    broken.write_text("no markers\n", encoding="utf-8")
    result = _cli("config", "reference", "--write", str(broken))
    assert result.returncode == 2 and "generated block" in result.stderr


def test_config_show_merges_the_sources_and_masks_secrets(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("series_timeout_s: 4\nqa:\n  failure_policy: hold\n", encoding="utf-8")
    env = {
        "PACS_NODE_DATABASE_URL": "postgresql+psycopg://node:hun/ter@2@db/pacs",
        "PACS_NODE_BROKER_URL": "redis://r:6379/0?password=hunter2",
        "PACS_NODE_WORKER__NODE_URL": "http://node:8000",
        "PACS_NODE_WORKER__NODE_TOKEN": "tok-secret-value",
        "PACS_NODE_QA__LIMITS__MEAN_SHIFT_HU": "3",
    }
    result = _cli("config", "show", "--json", "--config", str(overlay), env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["series_timeout_s"] == 4 and shown["qa"]["failure_policy"] == "hold"
    assert shown["qa"]["limits"]["mean_shift_hu"] == 3
    assert shown["database_url"] == "postgresql+psycopg://node:***@db/pacs"
    assert shown["broker_url"] == "redis://r:6379/0?password=***"
    for secret in ("hun/ter", "hunter2", "tok-secret-value"):
        assert secret not in result.stdout
    as_yaml = yaml.safe_load(_cli("config", "show", "--config", str(overlay), env=env).stdout)
    assert as_yaml == shown


def test_null_in_the_environment_is_null(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_NODE_QA__LIMITS__MEAN_SHIFT_HU", "null")
    monkeypatch.setenv("PACS_NODE_DATABASE_URL", "null")
    settings = Settings()
    assert settings.qa.limits.mean_shift_hu is None and settings.database_url is None


def test_config_show_refuses_invalid_settings_with_the_reason() -> None:
    result = _cli("config", "show", env={"PACS_NODE_WORKER__LEASE_S": "1"})
    assert result.returncode == 2
    assert "worker.lease_s" in result.stderr and "greater than or equal to 5" in result.stderr


def test_default_yaml_lists_every_setting_with_its_default() -> None:
    listed = _flatten(yaml.safe_load((ROOT / "configs" / "default.yaml").read_text()))
    keys = _keys(Settings)
    assert sorted(set(keys) - set(listed) - SECRETS) == [], "missing from configs/default.yaml"
    assert sorted(set(listed) - set(keys)) == [], "unknown keys in configs/default.yaml"
    for key, value in listed.items():
        default = keys[key]
        if isinstance(default, Path) or key in ("data_dir",):
            continue
        assert value == default or str(value) == str(default), (key, value, default)
