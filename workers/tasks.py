"""Celery tasks: translate ``run_job``'s outcome into retries and FAILED jobs (an edge)."""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import timedelta
from functools import cache

from celery import Task
from celery.signals import worker_init, worker_ready

from pacs_node.db.models import JobStatus
from pacs_node.db.repository import LeaseLost
from pacs_node.enhancers import EnhancerCache, check_startup_isolated
from pacs_node.errors import DispatchError, EnhancementError
from workers.app import app, settings
from workers.context import WorkerContext
from workers.job import forward_job, run_job
from workers.limits import Deadlines, TimeLimitExceeded, enforce_hard_limit, soft_limit_s

logger = logging.getLogger(__name__)


@cache
def _context() -> WorkerContext:
    return WorkerContext.from_settings(settings)


@worker_init.connect
def _check_preset(**_kwargs: object) -> None:
    """Refuse to start a worker whose default preset cannot be loaded (names the file).

    A prefork pool's parent checks in a spawned process: its forked children would hang
    in PyTorch's thread pool had the parent used it (tests/integration/test_prefork.py).
    """
    if settings.worker.pool == "prefork":
        check_startup_isolated(settings)
    else:
        EnhancerCache(settings).check_startup()


HEARTBEAT_S = 10.0
DEADLINES = Deadlines()


@worker_ready.connect
def _start_heartbeat(**_kwargs: object) -> None:
    """Write this worker's heartbeat row every HEARTBEAT_S seconds (read by /api/ready) and
    renew the leases of the jobs it runs (taken back by the node once they expire)."""
    ctx = _context()
    lease = timedelta(seconds=ctx.settings.worker.lease_s)

    def beat() -> None:
        while True:
            try:
                ctx.repository.beat(ctx.name)
                # A job past its hard limit keeps no lease: the node takes it back, and
                # this worker, stuck in it, ends so that a fresh one replaces it.
                ctx.repository.renew_leases(ctx.name, lease, enforce_hard_limit(DEADLINES))
            except Exception:  # a database hiccup must not kill the heartbeat
                logger.exception("heartbeat failed")
            # Renew well within the lease, so a live worker never loses its job.
            time.sleep(min(HEARTBEAT_S, ctx.settings.worker.lease_s / 3))

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()


def backoff_s(base_s: float, attempts: int, rng: random.Random | None = None) -> float:
    """Exponential back-off with jitter: ``base × 2^(attempts-1)``, ±25 %, so nodes and
    workers that failed together do not all retry at the same moment."""
    jitter = (rng or random).uniform(0.75, 1.25)
    return float(base_s * 2 ** max(attempts - 1, 0) * jitter)


@app.task(name="workers.enhance_series", bind=True, max_retries=None)
def enhance_series(self: Task, job_id: int) -> str | None:
    """Run job ``job_id``; a transient send failure puts it back in the queue with its next
    attempt scheduled in the database (exponential back-off with jitter), and after
    ``worker.max_attempts`` it is FAILED (the dead letter, retried by an admin)."""
    ctx = _context()
    try:
        return _enhance(ctx, job_id)
    except LeaseLost as exc:  # taken back by the node; another worker has it now
        logger.warning("job %d: %s; leaving it to its new worker", job_id, exc)
        return None


def _enhance(ctx: WorkerContext, job_id: int) -> str | None:
    """The task's body; every change to the job holds only while this worker holds it."""
    repo, me = ctx.repository, ctx.name
    job = repo.get_job(job_id)
    # An uncertainty map of K samples runs the full sampler up to K + 1 more times per
    # slice (stochastic presets only; for others the limit is merely generous).
    samples = ctx.settings.derived.uncertainty_samples
    runs = 2 + samples if samples else 1
    soft = soft_limit_s(ctx.settings.worker, job.instance_count if job is not None else 0, runs)
    try:
        with DEADLINES.limit(job_id, soft):
            status = run_job(job_id, ctx)
    except LeaseLost:
        raise
    except TimeLimitExceeded as exc:
        job = repo.get_job(job_id)
        # Not if it ended, or was held by the QA gate, as the alarm rang.
        if job is not None and not job.status.finished and job.status is not JobStatus.HELD:
            repo.transition(job_id, JobStatus.FAILED, str(exc), error_code=exc.code, owner=me)
        return JobStatus.FAILED.value
    except DispatchError as exc:
        job = repo.get_job(job_id)
        attempts = job.attempts if job else ctx.settings.worker.max_attempts
        if attempts >= ctx.settings.worker.max_attempts:
            repo.transition(job_id, JobStatus.FAILED, f"{exc} (after {attempts} attempts)",
                            error_code=exc.code, owner=me)  # fmt: skip
            return JobStatus.FAILED.value
        delay = backoff_s(ctx.settings.worker.retry_backoff_s, attempts)
        repo.schedule_retry(job_id, timedelta(seconds=delay),
                            f"{exc}; retry {attempts + 1} in {delay:.0f} s", owner=me)  # fmt: skip
        return JobStatus.QUEUED.value
    except EnhancementError as exc:
        repo.transition(job_id, JobStatus.FAILED, str(exc), error_code=exc.code, owner=me)
        return JobStatus.FAILED.value
    except Exception as exc:  # edge: an unexpected error still ends the job
        logger.exception("job %d failed unexpectedly", job_id)
        repo.transition(
            job_id,
            JobStatus.FAILED,
            f"internal error: {type(exc).__name__}: {exc}",
            error_code="internal_error",
            owner=me,
        )
        return JobStatus.FAILED.value
    return status.value if status else None


@app.task(name="workers.forward_series", bind=True, max_retries=None)
def forward_series(self: Task, job_id: int) -> bool:
    """Send a SKIPPED series untouched to its rule's destinations. A transient failure is
    retried like enhancement sends (back-off scheduled in the database); after
    ``worker.max_attempts``, or at once for a lasting error, the job is FAILED with the
    reason (an admin's retry forwards it again)."""
    ctx = _context()
    worker = ctx.settings.worker
    try:
        return forward_job(job_id, ctx)
    except DispatchError as exc:
        job = ctx.repository.get_job(job_id)
        delay = backoff_s(worker.retry_backoff_s, (job.attempts if job else 0) + 1)
        ctx.repository.forward_failed(job_id, str(exc), timedelta(seconds=delay),
                                      worker.max_attempts)  # fmt: skip
        return False
    except EnhancementError as exc:
        ctx.repository.forward_failed(job_id, str(exc), None, worker.max_attempts)
        return False
