"""Presets marked experimental run only after an explicit opt-in, with the reason given."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs_node.enhancers import EnhancerCache
from pacs_node.errors import ConfigError, ModelError
from pacs_node.routing import load_routing
from pacs_node.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "routing.example.yaml"


def test_an_experimental_preset_is_refused_without_the_opt_in() -> None:
    cache = EnhancerCache(Settings())
    with pytest.raises(ModelError, match="mr-denoise is experimental: trained on synthetic"):
        cache.get("mr-denoise")
    with pytest.raises(ConfigError, match="mr-denoise is experimental"):
        cache.check_usable(["ct-denoise", "mr-denoise"])
    cache.check_usable(["ct-denoise", "ct-sr2x", "gaussian"])  # proven or classical: fine
    with pytest.raises(ConfigError, match="allow_experimental"):
        EnhancerCache(Settings(preset="mr-denoise")).check_startup()


def test_the_opt_in_lets_them_run() -> None:
    cache = EnhancerCache(Settings(models={"allow_experimental": True}))
    assert cache.get("mr-denoise").info.modality == "MR"
    cache.check_usable(["ct-sr2x", "mr-denoise"])


def test_a_routing_file_naming_an_experimental_preset_stops_start_up() -> None:
    settings = Settings(routing_file=EXAMPLE)
    routing = load_routing(settings)
    assert {"mr-denoise", "ct-sr2x"} <= routing.preset_names()
    with pytest.raises(ConfigError, match="experimental"):
        EnhancerCache(settings).check_usable(routing.preset_names())
