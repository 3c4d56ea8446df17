"""Every setting is documented: in the configuration reference's table and, with its
default, in configs/default.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from pacs_node.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"worker.node_token"}  # set only in the environment, never in a file


def _keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Dotted setting names with their defaults (nested sections flattened)."""
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


def test_every_setting_is_in_the_configuration_reference() -> None:
    table = (ROOT / "docs" / "configuration.md").read_text()
    documented = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([a-z_.]+)`", line.split("|")[1]))
    keys = _keys(Settings)
    assert len(keys) > 50 and "worker.lease_s" in keys  # nested sections are walked
    missing = sorted(set(keys) - documented)
    assert missing == [], f"not in docs/configuration.md: {missing}"


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
