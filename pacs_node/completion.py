"""Series completion: a quiet series becomes a QUEUED (or SKIPPED) job and is published."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository
from pacs_node.dicom.classify import series_skip_reason
from pacs_node.dispatch import ENHANCE_TASK, FORWARD_TASK, Dispatcher
from pacs_node.errors import DispatchError

logger = logging.getLogger(__name__)


class CompletionMonitor:
    """Polls the job database; every step is idempotent so several nodes may run it.

    A job whose series received no instance for ``series_timeout_s`` (for
    ``declared_complete_after_s`` once its sender declared it complete: the end of a
    STOW-RS request) is closed: SKIPPED
    with the reason when the series is not enhanceable, else QUEUED. QUEUED jobs not yet
    in the broker are published; if the broker is down they stay and are retried, so an
    accepted series is never lost. Jobs left in RECEIVING by a restart are picked up too.

    It is also the reconciler: a running job whose worker stopped renewing its lease is
    queued again (or FAILED after ``max_attempts``), and a QUEUED job no worker took for
    ``requeue_after_s`` is published again, in case the broker lost its message.
    """

    def __init__(
        self,
        repository: JobRepository,
        dispatcher: Dispatcher,
        series_timeout_s: float,
        interval_s: float,
        own_manufacturer: str,
        preset_modalities: Mapping[str, str] | None = None,
        max_attempts: int = 3,
        requeue_after_s: float = 600.0,
        declared_complete_after_s: float = 0.0,
    ) -> None:
        self._repository = repository
        self._dispatcher = dispatcher
        self._quiet_for = timedelta(seconds=series_timeout_s)
        self._declared_quiet_for = timedelta(seconds=declared_complete_after_s)
        self._interval_s = interval_s
        self._own_manufacturer = own_manufacturer
        self._preset_modalities = dict(preset_modalities or {})
        self._max_attempts = max_attempts
        self._requeue_after = timedelta(seconds=requeue_after_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _skip_reason(self, job_id: int) -> str | None:
        job = self._repository.get_job(job_id)
        if job is not None and job.preset is None:
            return f"routing rule {job.rule!r} does not enhance this series"
        headers = []
        for item in self._repository.job_inputs(job_id):
            try:
                headers.append(pydicom.dcmread(Path(item.path), stop_before_pixels=True))
            except (OSError, InvalidDicomError) as exc:
                return f"stored instance {item.sop_instance_uid} is unreadable: {exc}"
        if not headers:
            return "the series has no stored instances"
        reason = series_skip_reason(headers, self._own_manufacturer)
        if reason is None and job is not None and job.preset is not None:
            # A preset trained for one modality is not applied to another (MR through a CT
            # network would be meaningless, and HU clipping would destroy MR values).
            wanted = self._preset_modalities.get(job.preset, "any")
            modality = str(headers[0].get("Modality", "") or "")
            if wanted.upper() != "ANY" and modality.upper() != wanted.upper():
                reason = f"preset {job.preset} is for {wanted}, the series is {modality or '?'}"
        return reason

    def run_once(self) -> None:
        """Close every quiet series, take back jobs whose worker's lease expired, mark jobs
        that waited too long in the queue for publishing again, and publish every
        undispatched job."""
        quiet, declared = self._quiet_for, self._declared_quiet_for
        for job_id in self._repository.due_receiving_jobs(quiet, declared):
            reason = self._skip_reason(job_id)
            status = self._repository.close_receiving(job_id, quiet, reason, declared)
            if status is JobStatus.SKIPPED:
                logger.info("job %d skipped: %s", job_id, reason)
            elif status is JobStatus.QUEUED:
                logger.info("job %d queued", job_id)
        for job_id, status in self._repository.reclaim_expired(self._max_attempts):
            logger.warning("job %d: its worker's lease expired; now %s", job_id, status.value)
        for job_id in self._repository.redispatch_stale(self._requeue_after):
            logger.warning("job %d: no worker took it in time; publishing it again", job_id)
        work = [(job_id, ENHANCE_TASK) for job_id in self._repository.undispatched_jobs()]
        work += [(job_id, FORWARD_TASK) for job_id in self._repository.undispatched_forwards()]
        for job_id, task in work:
            try:
                self._dispatcher.enqueue(job_id, task)
            except DispatchError as exc:
                logger.warning("%s; will retry", exc)
                return
            self._repository.mark_dispatched(job_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the loop must outlive a database hiccup
                logger.exception("completion monitor round failed; retrying")
            self._stop.wait(self._interval_s)

    def start(self) -> None:
        """Run in a daemon thread until ``stop()``."""
        self._thread = threading.Thread(target=self._loop, name="completion-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for its current round."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
