"""Retention: age limits for derived files, received files and job rows, and emergency
clean-up of the oldest finished jobs when the disk passes a watermark. Data of unfinished
jobs is never touched."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from pacs_node.admin import JobAdmin
from pacs_node.admission import disk_used_percent
from pacs_node.db import lifecycle
from pacs_node.db.models import Instance, Job, JobOutput, JobStatus, utcnow
from pacs_node.settings import RetentionSettings

logger = logging.getLogger(__name__)

ACTOR = "retention"
FINISHED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.SKIPPED)


@dataclass
class RetentionReport:
    """What one round removed."""

    derived_files: int = 0
    received_files: int = 0
    jobs: int = 0
    emergency_jobs: int = 0
    notes: list[str] = field(default_factory=list)


def _unlink(paths: list[str]) -> int:
    removed = 0
    for name in paths:
        try:
            Path(name).unlink()
            removed += 1
        except FileNotFoundError:
            continue
    return removed


class Retention:
    """Applies :class:`RetentionSettings` to the job database and the data directory."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        data_dir: Path,
        settings: RetentionSettings,
        used_percent: Callable[[Path], float] = disk_used_percent,
    ) -> None:
        self._sessions = sessions
        self._data_dir = data_dir
        self._settings = settings
        self._used_percent = used_percent
        self._admin = JobAdmin(sessions)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _old_finished(self, session: Session, days: float) -> list[Job]:
        cutoff = utcnow() - timedelta(days=days)
        return list(
            session.scalars(
                select(Job)
                .where(Job.status.in_(FINISHED), Job.finished_at.is_not(None))
                .where(Job.finished_at < cutoff)
                .order_by(Job.finished_at)
            )
        )

    def _expire_derived(self, days: float) -> int:
        paths: list[str] = []
        with self._sessions.begin() as session:
            for job in self._old_finished(session, days):
                outputs = list(session.scalars(select(JobOutput).where(JobOutput.job_id == job.id)))
                if not outputs:
                    continue
                paths += [o.path for o in outputs]
                session.execute(delete(JobOutput).where(JobOutput.job_id == job.id))
                lifecycle.note(session, job.id, f"retention: {len(outputs)} derived files "
                               f"removed after {days:g} days", ACTOR)  # fmt: skip
        return _unlink(paths)

    def _expire_received(self, days: float) -> int:
        paths: list[str] = []
        with self._sessions.begin() as session:
            for job in self._old_finished(session, days):
                # Only when no unfinished job still needs the series' files.
                busy = session.scalar(
                    select(Job.id).where(
                        Job.series_id == job.series_id, Job.status.not_in(FINISHED)
                    )
                )
                if busy is not None:
                    continue
                instances = list(
                    session.scalars(select(Instance).where(Instance.series_id == job.series_id))
                )
                if not instances:
                    continue
                paths += [i.path for i in instances]
                session.execute(delete(Instance).where(Instance.series_id == job.series_id))
                lifecycle.note(session, job.id, f"retention: {len(instances)} received files "
                               f"removed after {days:g} days", ACTOR)  # fmt: skip
        return _unlink(paths)

    def _finished_ids(self, days: float | None) -> list[int]:
        with self._sessions() as session:
            query = select(Job.id).where(Job.status.in_(FINISHED)).order_by(Job.finished_at)
            if days is not None:
                query = query.where(Job.finished_at < utcnow() - timedelta(days=days))
            return list(session.scalars(query))

    def run_once(self) -> RetentionReport:
        """One round: age limits first, then the disk watermark."""
        settings, report = self._settings, RetentionReport()
        if settings.derived_days is not None:
            report.derived_files = self._expire_derived(settings.derived_days)
        if settings.received_days is not None:
            report.received_files = self._expire_received(settings.received_days)
        if settings.jobs_days is not None:
            for job_id in self._finished_ids(settings.jobs_days):
                self._admin.delete(job_id, ACTOR)
                report.jobs += 1
        used = self._used_percent(self._data_dir)
        if used >= settings.disk_watermark_percent:
            logger.warning("disk %.1f %% used (watermark %.0f %%): removing the oldest "
                           "finished jobs", used, settings.disk_watermark_percent)  # fmt: skip
            for job_id in self._finished_ids(None):
                self._admin.delete(job_id, ACTOR)
                report.emergency_jobs += 1
                used = self._used_percent(self._data_dir)
                if used <= settings.disk_target_percent:
                    break
            else:
                report.notes.append(
                    f"disk still {used:.1f} % used: only unfinished jobs' data is left"
                )
                logger.error(report.notes[-1])
        if report.derived_files or report.received_files or report.jobs or report.emergency_jobs:
            logger.info("retention: %s", report)
        return report

    def _loop(self) -> None:
        while not self._stop.wait(self._settings.interval_s):
            try:
                self.run_once()
            except Exception:  # the loop must outlive a database hiccup
                logger.exception("retention round failed; retrying")

    def start(self) -> None:
        """Run every ``interval_s`` in a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
