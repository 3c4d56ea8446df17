"""The running node: SCP, completion monitor, admin API and (embedded mode) a worker."""

from __future__ import annotations

import collections.abc
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import uvicorn
from prometheus_client import CollectorRegistry

from pacs_node.api.app import Readiness, create_app
from pacs_node.completion import CompletionMonitor
from pacs_node.db import migrate
from pacs_node.db.repository import JobRepository
from pacs_node.db.session import make_engine, make_session_factory
from pacs_node.dispatch import Dispatcher
from pacs_node.enhancers import EnhancerCache
from pacs_node.metrics import ReceiverMetrics
from pacs_node.retention import Retention
from pacs_node.routing import load_routing
from pacs_node.scp.process import make_receiver, receiver_counts, stop_on_signal
from pacs_node.scp.server import start_scp
from pacs_node.settings import REPO_ROOT, Settings

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # prctl(2) option, <linux/prctl.h>
RESTART_DELAY_S = 2.0  # a dead child is restarted after this, doubling up to the maximum
RESTART_DELAY_MAX_S = 60.0
STOP_TIMEOUT_S = 60.0  # a child's warm shutdown, then it is killed


def _die_with_parent() -> collections.abc.Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child get SIGTERM when this process dies (Linux
    ``PR_SET_PDEATHSIG``), so a node killed with SIGKILL leaves no worker behind; None
    where the kernel has no such option."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no locks, no logging
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the node died before the option was set
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def worker_command(settings: Settings, hostname: str) -> list[str]:
    """The command line of a Celery worker for this node's queue."""
    return [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker",
        "--loglevel", settings.log_level,
        "--pool", settings.worker.pool,
        "--concurrency", str(settings.worker.concurrency),
        "--queues", settings.worker.queue,
        "--hostname", hostname,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def worker_environment(settings: Settings) -> dict[str, str]:
    """The environment that makes a child worker see exactly this node's resolved settings."""
    env = dict(os.environ)
    env.update(
        PACS_NODE_DATA_DIR=str(settings.data_dir),
        PACS_NODE_DATABASE_URL=settings.db_url,
        PACS_NODE_BROKER_URL=settings.celery_broker_url,
        PACS_NODE_DEVICE=settings.device,
    )
    if (REPO_ROOT / "workers").is_dir():  # a source checkout: its packages first
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


class SupervisedChild:
    """A child process of the node, restarted if it dies, stopped with the node; its
    output goes to ``log_path``."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self._command = command
        self._env = env
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name=f"{name} supervisor", daemon=True
        )

    def _spawn(self) -> None:
        with open(self._log_path, "ab") as log:
            # The parent-death signal fires when the thread that started the child ends:
            # the main thread (first start) or the supervisor (restarts), both of which
            # live as long as the node.
            self._process = subprocess.Popen(
                self._command, env=self._env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )  # fmt: skip
        logger.info("%s started (pid %d, log %s)", self.name, self._process.pid, self._log_path)

    def _supervise(self) -> None:
        delay = RESTART_DELAY_S
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                if self._process is None or self._process.poll() is not None:
                    if self._process is not None:
                        # A child that keeps failing (a bad configuration) is restarted
                        # less and less often, up to once a minute; one that ran for a
                        # while starts again from the short delay.
                        if time.monotonic() - started > RESTART_DELAY_MAX_S:
                            delay = RESTART_DELAY_S
                        logger.error("%s exited with %s; restarting in %.0f s", self.name,
                                     self._process.returncode, delay)  # fmt: skip
                        self._stop.wait(delay)
                        delay = min(2 * delay, RESTART_DELAY_MAX_S)
                        if self._stop.is_set():
                            return
                    started = time.monotonic()
                    self._spawn()
            except Exception:  # a failed spawn (no memory, no file descriptor): try again
                logger.exception("%s could not be started; trying again", self.name)
                self._stop.wait(delay)
                delay = min(2 * delay, RESTART_DELAY_MAX_S)
            self._stop.wait(1.0)

    def running(self) -> bool:
        """Whether the child is alive now (False while it waits to be restarted)."""
        process = self._process
        return process is not None and process.poll() is None

    def start(self) -> None:
        """Start the child and its supervisor."""
        self._spawn()
        self._thread.start()

    def request_stop(self) -> None:
        """No more restarts, and SIGTERM to the child (warm shutdown: a worker finishes
        its task, a receiver its associations); :meth:`wait_stopped` waits for it."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the child until ``deadline`` (``time.monotonic()``), then kill it."""
        if self._process is None:
            return
        try:
            self._process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        """:meth:`request_stop`, then kill the child after 60 s."""
        self.request_stop()
        self.wait_stopped(time.monotonic() + STOP_TIMEOUT_S)


class EmbeddedWorker(SupervisedChild):
    """A Celery worker child process, restarted if it dies, stopped with the node."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            "embedded worker",
            worker_command(settings, f"embedded-{os.getpid()}@%h"),
            worker_environment(settings),
            settings.data_dir / "worker.log",
        )


class ReceiverProcess(SupervisedChild):
    """A receiver child (``scp.processes`` above 1): :func:`pacs_node.scp.process.receive`
    in its own process, on the node's DICOM port(s)."""

    def __init__(self, settings: Settings, index: int) -> None:
        super().__init__(
            f"receiver process {index}",
            [sys.executable, "-m", "pacs_node", "receive"],
            worker_environment(settings),
            settings.data_dir / f"receiver-{index}.log",
        )


def serve(settings: Settings) -> None:
    """Run the node until SIGINT or SIGTERM."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # A missing or corrupt checkpoint of the configured preset stops start-up here, with
    # the file named, instead of failing the first job.
    enhancers = EnhancerCache(settings)
    enhancers.check_startup()
    routing = load_routing(settings)
    routing.check_presets(list(enhancers.presets))
    enhancers.check_usable(routing.preset_names())  # experimental ones need an opt-in
    migrate.upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    repository = JobRepository(make_session_factory(engine))
    dispatcher = Dispatcher(settings.celery_broker_url, settings.worker.queue)
    worker = EmbeddedWorker(settings) if settings.embedded_worker else None
    if worker is not None:
        worker.start()
    registry = CollectorRegistry()
    counts = receiver_counts(settings)  # of receiver processes, when there are some
    shutil.rmtree(counts, ignore_errors=True)
    metrics = ReceiverMetrics(registry, counts if settings.scp.processes > 1 else None)
    receiver = make_receiver(settings, repository, routing, metrics)
    scp = start_scp(settings, receiver)
    receivers = [ReceiverProcess(settings, index) for index in range(1, settings.scp.processes)]
    for child in receivers:
        child.start()
    monitor = CompletionMonitor(
        repository,
        dispatcher,
        settings.series_timeout_s,
        settings.monitor_interval_s,
        own_manufacturer=settings.derived.manufacturer,
        preset_modalities={name: p.modality for name, p in enhancers.presets.items()},
        max_attempts=settings.worker.max_attempts,
        requeue_after_s=settings.worker.requeue_after_s,
        declared_complete_after_s=settings.dicomweb.complete_after_s,
    )
    monitor.start()
    retention = Retention(repository.session_factory, settings.data_dir, settings.retention)
    retention.start()
    readiness = Readiness(
        settings,
        dispatcher.ping,
        # The node's own SCP and the receiver processes alive now.
        (lambda: (1 + sum(child.running() for child in receivers), settings.scp.processes))
        if receivers
        else None,
    )
    http = uvicorn.Server(
        uvicorn.Config(
            create_app(repository, engine, receiver, readiness, registry),
            host=settings.http_host,
            port=settings.http_port,
            log_level="warning",
        )
    )
    http_thread = threading.Thread(target=http.run, name="http", daemon=True)
    http_thread.start()

    stop = stop_on_signal()
    logger.info(
        "node ready: AE %s on DICOM port %d, admin API and DICOMweb http://%s:%d, %s worker",
        ", ".join(routing.ae_titles),
        settings.port,
        settings.http_host,
        settings.http_port,
        "embedded" if worker else "external",
    )
    _write_ready_file(settings.data_dir)
    while not stop.is_set():
        stop.wait(1.0)
    # Receivers first: no restarts and SIGTERM to all at once, so none accepts while the
    # others drain; then this process's SCP; then one shared deadline for all of them.
    for child in receivers:
        child.request_stop()
    scp.shutdown()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in receivers:
        child.wait_stopped(deadline)
    monitor.stop()
    retention.stop()
    http.should_exit = True
    http_thread.join(timeout=10)
    if worker is not None:
        worker.stop()
    dispatcher.close()
    engine.dispose()
    (settings.data_dir / "node.ready").unlink(missing_ok=True)
    logger.info("node stopped")


def _write_ready_file(data_dir: Path) -> None:
    """Mark the node as accepting associations (scripts and tests wait for this file)."""
    (data_dir / "node.ready").write_text(f"{os.getpid()} {time.time():.0f}\n")
