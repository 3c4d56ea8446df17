"""A receiver process (``scp.processes`` above 1): the Storage SCP alone, beside the node.

Kept light on purpose: a receiver imports what receiving needs (settings, routing, the job
database, the store) and none of the model, worker or web stack, so each starts in a
moment and holds little memory.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from pacs_node.admission import DiskGuard
from pacs_node.db.repository import JobRepository
from pacs_node.db.session import make_engine, make_session_factory
from pacs_node.ingest import Receiver
from pacs_node.metrics import ReceiverMetrics
from pacs_node.routing import Routing, load_routing
from pacs_node.scp.server import start_scp
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore

logger = logging.getLogger(__name__)

PUBLISH_INTERVAL_S = 1.0  # how often a receiver writes its counts for the node's /metrics


def receiver_counts(settings: Settings) -> Path:
    """The folder where receiver processes publish their counts, one file each (the node
    empties it when it starts: counters start from zero with the node)."""
    return settings.data_dir / "receivers"


def stop_on_signal() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        logger.info("signal %d received; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    return stop


def make_receiver(
    settings: Settings, repository: JobRepository, routing: Routing, metrics: ReceiverMetrics
) -> Receiver:
    """The receiver of the node or of a receiver process: the data directory's store,
    guarded by the data disk's watermarks."""
    disk = DiskGuard(
        settings.data_dir, settings.admission.max_used_percent, settings.admission.min_free_gib
    )
    return Receiver(InstanceStore(settings.data_dir), repository, routing, metrics, disk)


def publish(metrics: ReceiverMetrics, path: Path) -> None:
    """:meth:`ReceiverMetrics.publish`, logging a failure (the data disk full) instead
    of ending the receiver: receiving matters more than counting."""
    try:
        metrics.publish(path)
    except OSError as exc:
        logger.warning("receive counts not published to %s: %s", path, exc)


def receive(settings: Settings) -> None:
    """Run a receiver process until SIGTERM: the Storage SCP alone, on the port(s) the
    node shares with it, storing and recording as the node does.

    Each process has its own interpreter lock, so parallel associations spread over the
    processes use several cores. The node itself migrates the database, watches series
    completion, dispatches jobs and serves HTTP; a receiver only receives. It reads the
    configuration when it starts, as the node did (a receiver restarted after the
    configuration was edited sees the edit; restart the node after editing it).
    """
    stop = stop_on_signal()
    routing = load_routing(settings)
    engine = make_engine(settings.db_url)
    repository = JobRepository(make_session_factory(engine))
    metrics = ReceiverMetrics(None)  # the node exports them, from the file published here
    published = receiver_counts(settings) / f"{os.getpid()}.json"
    receiver = make_receiver(settings, repository, routing, metrics)
    scp = start_scp(settings, receiver, first=False)
    logger.info("receiver process %d ready", os.getpid())
    while not stop.is_set():
        publish(metrics, published)
        stop.wait(PUBLISH_INTERVAL_S)
    scp.shutdown()
    publish(metrics, published)
    engine.dispose()
    logger.info("receiver process %d stopped accepting; ending its associations", os.getpid())
