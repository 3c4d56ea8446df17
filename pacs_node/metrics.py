"""Prometheus metrics (``/metrics``): counters of the node's receivers, and job
states, queue depth, stage latencies and send failures read from the job database at each
scrape, so workers on other hosts are counted too."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pacs_node.db.models import Job, JobEvent, JobOutput, JobStatus

# Seconds; the same buckets for every stage (a second to an hour).
# The latest failed QA reports whose checks are counted at each scrape.
QA_REPORTS_SCANNED = 5000
BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class ReceiverMetrics:
    """Counters the receivers (C-STORE and STOW-RS) increment in this process.

    They are exported to ``registry`` (``/metrics``) together with the counts that the
    node's receiver processes (``scp.processes`` above 1) publish as files in ``peers``:
    a receiver process makes its own without a registry and writes its counts there with
    :meth:`publish`.
    """

    def __init__(self, registry: CollectorRegistry | None, peers: Path | None = None) -> None:
        own = CollectorRegistry()  # exported through _ReceiverCollector, merged with peers
        self.received = Counter(
            "pacs_node_instances_received", RECEIVED_HELP, ["protocol"], registry=own,
        )  # fmt: skip
        self.rejected = Counter(
            "pacs_node_instances_rejected", REJECTED_HELP, ["protocol", "status"], registry=own,
        )  # fmt: skip
        if registry is not None:
            registry.register(_ReceiverCollector(self, peers))
        self._published: dict[str, list[tuple[list[str], float]]] | None = None

    def counts(self) -> dict[str, list[tuple[list[str], float]]]:
        """This process's counts: ``{"received": [([protocol], n), ...], "rejected":
        [([protocol, status], n), ...]}``."""
        found: dict[str, list[tuple[list[str], float]]] = {"received": [], "rejected": []}
        for key, counter in (("received", self.received), ("rejected", self.rejected)):
            for metric in counter.collect():
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        found[key].append((list(sample.labels.values()), sample.value))
        return found

    def publish(self, path: Path) -> None:
        """Write :meth:`counts` to ``path`` atomically (the node's collector reads it),
        unless they are what this call wrote last time."""
        counts = self.counts()
        if counts == self._published:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(counts))
        os.replace(temporary, path)
        self._published = counts


RECEIVED_HELP = "Instances stored (duplicates included)"
REJECTED_HELP = "Instances refused, by storage status"


class _ReceiverCollector(Collector):
    """The receive counters of this process plus those published in ``peers``."""

    def __init__(self, metrics: ReceiverMetrics, peers: Path | None) -> None:
        self.metrics = metrics
        self.peers = peers

    def _published(self) -> Iterator[dict[str, Any]]:
        if self.peers is None or not self.peers.is_dir():
            return
        for path in sorted(self.peers.glob("*.json")):
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError):  # removed or replaced meanwhile: next scrape
                continue

    def collect(self) -> Iterator[Metric]:
        totals: dict[str, Tally[tuple[str, ...]]] = {"received": Tally(), "rejected": Tally()}
        for counts in [self.metrics.counts(), *self._published()]:
            for key, tally in totals.items():
                for labels, value in counts.get(key, []):
                    tally[tuple(labels)] += value
        received = CounterMetricFamily("pacs_node_instances_received", RECEIVED_HELP,
                                       labels=["protocol"])  # fmt: skip
        rejected = CounterMetricFamily("pacs_node_instances_rejected", REJECTED_HELP,
                                       labels=["protocol", "status"])  # fmt: skip
        for family, key in ((received, "received"), (rejected, "rejected")):
            for labels, value in sorted(totals[key].items()):
                family.add_metric(list(labels), value)
        yield received
        yield rejected


def _histogram(name: str, doc: str, values: Iterable[float]) -> HistogramMetricFamily:
    data = sorted(v for v in values if v >= 0)
    buckets = [(f"{b:g}", float(sum(1 for v in data if v <= b))) for b in BUCKETS]
    buckets.append(("+Inf", float(len(data))))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=float(sum(data)))


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier).total_seconds()


class JobCollector(Collector):
    """Job metrics computed from the database at scrape time."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self._sessions() as session:
            counts = dict(
                session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            )
            jobs = session.execute(
                select(
                    Job.id,
                    Job.created_at,
                    Job.last_instance_at,
                    Job.started_at,
                    Job.finished_at,
                    Job.status,
                )
            ).all()
            queued_at = dict(
                session.execute(
                    select(JobEvent.job_id, func.min(JobEvent.at))
                    .where(JobEvent.status == JobStatus.QUEUED)
                    .group_by(JobEvent.job_id)
                ).all()
            )
            verdicts = session.execute(
                select(Job.preset, Job.qa_verdict, func.count())
                .where(Job.qa_verdict.is_not(None))
                .group_by(Job.preset, Job.qa_verdict)
            ).all()
            failed_reports = session.scalars(
                select(Job.qa).where(Job.qa_verdict == "fail")
                .order_by(Job.id.desc()).limit(QA_REPORTS_SCANNED)
            ).all()  # fmt: skip
            failures = session.execute(
                select(Job.destinations, func.count())
                .join(JobOutput, JobOutput.job_id == Job.id)
                .where(JobOutput.send_status.is_not(None), JobOutput.send_status != 0)
                .group_by(Job.destinations)
            ).all()
        states = GaugeMetricFamily("pacs_node_jobs", "Jobs by state", labels=["state"])
        for state in JobStatus:
            states.add_metric([state.value], float(counts.get(state, 0)))
        yield states
        yield GaugeMetricFamily(
            "pacs_node_queue_depth", "Jobs QUEUED and not yet started",
            value=float(counts.get(JobStatus.QUEUED, 0)),
        )  # fmt: skip
        receive: list[float] = []
        wait: list[float] = []
        run: list[float] = []
        total: list[float] = []
        for _id, created, last, started, finished, status in jobs:
            queued = queued_at.get(_id)
            for target, value in (
                (receive, _seconds(last, created)),
                (wait, _seconds(started, queued)),
                (run, _seconds(finished, started) if status is JobStatus.DONE else None),
                (total, _seconds(finished, created) if status is JobStatus.DONE else None),
            ):
                if value is not None:
                    target.append(value)
        yield _histogram("pacs_node_stage_receive_seconds",
                         "First to last instance of a series", receive)  # fmt: skip
        yield _histogram("pacs_node_stage_queue_wait_seconds",
                         "Series complete (QUEUED) to a worker starting", wait)  # fmt: skip
        yield _histogram("pacs_node_stage_process_seconds",
                         "Worker start to all instances sent (model and sending)", run)  # fmt: skip
        yield _histogram("pacs_node_job_total_seconds",
                         "First instance received to derived series sent", total)  # fmt: skip
        by_destination: Tally[str] = Tally()
        for destinations, count in failures:
            for spec in json.loads(destinations or "[]"):
                name = (
                    f"{spec['ae_title']}@{spec['host']}:{spec['port']}"
                    if spec.get("kind") == "dicom"
                    else str(spec.get("url") or spec.get("kind"))
                )
                by_destination[name] += count
        sends = GaugeMetricFamily("pacs_node_send_failures",
                                  "Derived instances not stored, by job destination",
                                  labels=["destination"])  # fmt: skip
        for name, count in sorted(by_destination.items()):
            sends.add_metric([name], float(count))
        yield sends
        yield from _qa(verdicts, failed_reports)
        yield from _gpu()


def _qa(verdicts: Iterable[Any], failed_reports: Iterable[str | None]) -> Iterator[Metric]:
    """The QA gate's verdicts by preset, and how often each check failed."""
    by_verdict = GaugeMetricFamily("pacs_node_qa_jobs", "Jobs by QA gate verdict and preset",
                                   labels=["preset", "verdict"])  # fmt: skip
    for preset, verdict, count in verdicts:
        by_verdict.add_metric([str(preset), str(verdict)], float(count))
    yield by_verdict
    checks: Tally[str] = Tally()
    for text in failed_reports:
        report = json.loads(text or "{}")
        checks.update(name for name, c in report.get("checks", {}).items() if not c["passed"])
    failed = GaugeMetricFamily(
        "pacs_node_qa_check_failures",
        f"Jobs whose output failed each QA check (the latest {QA_REPORTS_SCANNED} failures)",
        labels=["check"],
    )
    for name, count in sorted(checks.items()):
        failed.add_metric([name], float(count))
    yield failed


def _gpu() -> Iterator[Metric]:
    """GPU memory of this host, when this process has PyTorch loaded and it sees a CUDA
    device (a scrape never pays for importing it)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    used = GaugeMetricFamily("pacs_node_gpu_memory_used_bytes", "GPU memory in use",
                             labels=["device"])  # fmt: skip
    total = GaugeMetricFamily("pacs_node_gpu_memory_total_bytes", "GPU memory",
                              labels=["device"])  # fmt: skip
    for index in range(torch.cuda.device_count()):
        free, size = torch.cuda.mem_get_info(index)
        used.add_metric([str(index)], float(size - free))
        total.add_metric([str(index)], float(size))
    yield used
    yield total
    utilisation = GaugeMetricFamily("pacs_node_gpu_utilisation_percent",
                                    "GPU utilisation (needs NVML)", labels=["device"])  # fmt: skip
    try:
        for index in range(torch.cuda.device_count()):
            utilisation.add_metric([str(index)], float(torch.cuda.utilization(index)))
    except Exception:  # noqa: BLE001 - NVML (pynvml) missing: memory only
        return
    yield utilisation
