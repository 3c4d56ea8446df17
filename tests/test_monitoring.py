"""The example Prometheus alert rules and Grafana dashboard name only metrics the node
exports: every ``pacs_node_*`` name in them appears on a real /metrics page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pacs_node.db.repository import JobRepository
from pacs_node.metrics import JobCollector, ReceiverMetrics

MONITORING = Path(__file__).resolve().parents[1] / "docker" / "monitoring"
ONLY_WITH_A_GPU = ("pacs_node_gpu_",)


def _exported(repository: JobRepository) -> set[str]:
    registry = CollectorRegistry()
    receiver = ReceiverMetrics(registry)
    receiver.received.labels("C-STORE").inc()
    receiver.rejected.labels("C-STORE", "0xA700").inc()
    registry.register(JobCollector(repository.session_factory))
    text = generate_latest(registry).decode()
    families = list(text_string_to_metric_families(text))
    # A labelled family with no sample yet (no QA verdict in an empty database) still
    # declares its name.
    return {f.name for f in families} | {s.name for f in families for s in f.samples}


def _referenced() -> set[str]:
    rules = yaml.safe_load((MONITORING / "alert-rules.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\bpacs_node_[a-z_]+", e)}


def test_alerts_and_dashboard_use_exported_metrics(repository: JobRepository) -> None:
    referenced = _referenced()
    assert {"pacs_node_queue_depth", "pacs_node_qa_jobs", "pacs_node_jobs"} <= referenced
    exported = _exported(repository)
    missing = sorted(m for m in referenced - exported if not m.startswith(ONLY_WITH_A_GPU))
    assert missing == [], f"not exported by the node: {missing}"


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load((MONITORING / "alert-rules.yaml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert len(names) == len(set(names)) >= 6
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"]
    config = yaml.safe_load((MONITORING / "prometheus.yaml").read_text())
    assert config["rule_files"] == ["alert-rules.yaml"]
