"""Time limits of a job, from its series size: a soft limit that ends the task with a
clear reason, and a hard limit at which a task stuck where no signal reaches it ends the
worker process (its supervisor, ``serve`` or systemd, starts a new one) and its lease
lapses, so the node takes the job back.

Celery's own time limits are not enforced by the solo pool the node runs by default, so
the soft limit is a SIGALRM timer in the thread that runs the task (the main thread in
the solo and prefork pools; with the threads pool only the hard limit applies).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from pacs_node.errors import EnhancementError
from pacs_node.settings import WorkerSettings

logger = logging.getLogger(__name__)

# After the soft limit, how long the task has to wind down before the hard limit.
HARD_GRACE_S = 300.0
# Exit status of a worker ended by a job past its hard limit (EX_SOFTWARE).
EXIT_HARD_LIMIT = 70


class TimeLimitExceeded(EnhancementError):
    """The job ran past its time limit."""

    code = "time_limit"


def soft_limit_s(settings: WorkerSettings, instance_count: int, runs_per_slice: int = 1) -> float:
    """The soft time limit of a job over ``instance_count`` instances (seconds), whose
    model runs up to ``runs_per_slice`` times per slice (with an uncertainty map of K
    samples: the output, the sampler's own draw and K more, K + 2)."""
    per_slice = settings.time_limit_per_slice_s * max(runs_per_slice, 1)
    return settings.time_limit_base_s + per_slice * instance_count


class Deadlines:
    """The hard deadlines (monotonic clock) of the jobs this worker runs, read by its
    heartbeat, which stops renewing the lease of a job past its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}

    def overdue(self) -> list[int]:
        """Jobs past their hard deadline."""
        now = time.monotonic()
        with self._lock:
            return [job for job, deadline in self._deadlines.items() if now > deadline]

    @contextmanager
    def limit(self, job_id: int, soft_s: float) -> Iterator[None]:
        """Run the body under a soft limit of ``soft_s`` and a hard one ``HARD_GRACE_S``
        later; raises :class:`TimeLimitExceeded` at the soft limit where it can."""
        with self._lock:
            self._deadlines[job_id] = time.monotonic() + soft_s + HARD_GRACE_S
        try:
            with _alarm(soft_s, f"job {job_id}"):
                yield
        finally:
            with self._lock:
                self._deadlines.pop(job_id, None)


def enforce_hard_limit(deadlines: Deadlines, stop: Callable[[int], object] = os._exit) -> list[int]:
    """End this worker process (``stop(EXIT_HARD_LIMIT)``) when a job is past its hard
    limit: its task ignored the soft limit and would hold the worker forever. Called by
    the heartbeat thread; the jobs' leases are no longer renewed, so the node takes them
    back. Returns the overdue jobs (none: nothing done)."""
    overdue = deadlines.overdue()
    if overdue:
        logger.critical(
            "jobs %s are past their hard time limit and did not stop; ending this worker so "
            "its supervisor starts a fresh one (the node takes the jobs back)",
            overdue,
        )
        logging.shutdown()
        stop(EXIT_HARD_LIMIT)
    return overdue


@contextmanager
def _alarm(seconds: float, what: str) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return

    def expired(_signum: int, _frame: FrameType | None) -> None:
        raise TimeLimitExceeded(f"{what} exceeded its time limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
