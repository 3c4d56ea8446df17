"""The receive counters of /metrics: this process's, plus what the node's receiver
processes publish (``scp.processes``), summed per label; a broken file is skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pacs_node.metrics import ReceiverMetrics
from pacs_node.scp.process import publish


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[str, ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(s.labels.values())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_of_receiver_processes_are_added_to_the_nodes(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    node = ReceiverMetrics(registry, tmp_path / "receivers")
    node.received.labels("C-STORE").inc(3)
    node.received.labels("STOW-RS").inc()
    node.rejected.labels("C-STORE", "0xC210").inc()
    for pid, (stored, refused) in {"101": (5, 2), "102": (7, 0)}.items():
        child = ReceiverMetrics(None)
        child.received.labels("C-STORE").inc(stored)
        if refused:
            child.rejected.labels("C-STORE", "0xA700").inc(refused)
        child.publish(tmp_path / "receivers" / f"{pid}.json")
    (tmp_path / "receivers" / "103.json").write_text("{not json")  # skipped, not fatal
    samples = _samples(registry)
    assert samples[("pacs_node_instances_received_total", ("C-STORE",))] == 15
    assert samples[("pacs_node_instances_received_total", ("STOW-RS",))] == 1
    assert samples[("pacs_node_instances_rejected_total", ("C-STORE", "0xC210"))] == 1
    assert samples[("pacs_node_instances_rejected_total", ("C-STORE", "0xA700"))] == 2


def test_a_node_alone_exports_its_own_counts(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    node = ReceiverMetrics(registry)
    assert not any(name.startswith("pacs_node_instances") for name, _ in _samples(registry))
    node.received.labels("C-STORE").inc()
    assert _samples(registry) == {("pacs_node_instances_received_total", ("C-STORE",)): 1.0}


def test_a_receiver_that_cannot_publish_keeps_receiving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "receivers").write_text("a file where the folder should be")
    metrics = ReceiverMetrics(None)
    publish(metrics, tmp_path / "receivers" / "101.json")  # logs, does not raise
    assert "receive counts not published" in caplog.text
