"""Administration shared by the API and the CLI: API tokens and job actions, each action
written to the job's audit trail with who did it."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pacs_node.db import lifecycle
from pacs_node.db.models import (
    ApiToken,
    Instance,
    Job,
    JobStatus,
    JobTombstone,
    Series,
    utcnow,
)
from pacs_node.errors import ActionError

logger = logging.getLogger(__name__)

Role = Literal["admin", "viewer", "worker", "dicomweb-write"]
# worker: a Celery worker on another host (reads inputs by WADO-RS, uploads its jobs'
# derived series); dicomweb-write: a PACS or modality that sends by STOW-RS.
ROLES: tuple[str, ...] = ("admin", "viewer", "worker", "dicomweb-write")
TOKEN_PREFIX = "pn_"


def token_digest(token: str) -> str:
    """SHA-256 of a token, the only form the database keeps."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _skip_reason(job: Job) -> str:
    """Why the job's series was skipped, from its audit trail."""
    marker = "; skipped: "
    for event in reversed(job.events):
        if event.status is JobStatus.SKIPPED and marker in event.message:
            return event.message.split(marker, 1)[1]
    return "skipped"


def _tombstone(job: Job, actor: str) -> JobTombstone:
    """The record a deleted job leaves: its identity, outcome and whole audit trail."""
    trail = [
        {"at": e.at.isoformat(), "status": e.status.value, "message": e.message, "actor": e.actor}
        for e in job.events
    ]
    return JobTombstone(
        job_id=job.id, study_instance_uid=job.series.study_instance_uid,
        series_instance_uid=job.series.series_instance_uid, status=job.status.value,
        preset=job.preset, instance_count=job.instance_count, error_code=job.error_code,
        error_message=job.error_message,
        output_series_instance_uid=job.output_series_instance_uid, created_at=job.created_at,
        finished_at=job.finished_at, deleted_by=actor[:64], events=json.dumps(trail),
    )  # fmt: skip


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and role."""

    name: str
    role: str
    show_patient: bool

    @property
    def is_admin(self) -> bool:
        """Admins may act and see configuration."""
        return self.role == "admin"

    @property
    def stores_dicomweb(self) -> bool:
        """May send instances by STOW-RS."""
        return self.role in ("admin", "dicomweb-write")

    @property
    def searches_dicomweb(self) -> bool:
        """May search by QIDO-RS (viewers without patient data see it hidden)."""
        return self.role in ("admin", "worker", "viewer")

    @property
    def retrieves_dicomweb(self) -> bool:
        """May retrieve whole instances or their metadata by WADO-RS, which carry the
        patient's identifiers: admins, workers, and viewers allowed to see patients."""
        return self.role in ("admin", "worker") or (self.role == "viewer" and self.show_patient)

    @property
    def uploads_outputs(self) -> bool:
        """Workers on other hosts (and admins) may upload a running job's derived series."""
        return self.role in ("admin", "worker")

    @property
    def sees_patient(self) -> bool:
        """Whether patient identifiers may be shown to this caller."""
        return self.role in ("admin", "worker") or self.show_patient


@dataclass(frozen=True)
class TokenView:
    """A token as listed (never its value)."""

    name: str
    role: str
    show_patient: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenStore:
    """Creates, checks and revokes API tokens."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def create(self, name: str, role: str, show_patient: bool = False) -> str:
        """A new token for ``name``; returned once, stored only as its SHA-256.

        Raises
        ------
        ActionError
            Unknown role, or a token of that name exists.
        """
        if role not in ROLES:
            raise ActionError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not name or len(name) > 64:
            raise ActionError("token name must be 1-64 characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            with self._sessions.begin() as session:
                row = ApiToken(name=name, role=role, show_patient=show_patient,
                               token_sha256=token_digest(token), created_at=utcnow())  # fmt: skip
                session.add(row)
        except IntegrityError as exc:
            raise ActionError(f"a token named {name!r} exists; revoke it first") from exc
        return token

    def revoke(self, name: str) -> None:
        """Revoke the token ``name`` (kept for the record, no longer accepted)."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(ApiToken)
                .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise ActionError(f"no active token named {name!r}", missing=True)

    def list(self) -> list[TokenView]:
        """Every token, active and revoked."""
        with self._sessions() as session:
            return [
                TokenView(
                    t.name, t.role, t.show_patient, t.created_at, t.last_used_at, t.revoked_at
                )
                for t in session.scalars(select(ApiToken).order_by(ApiToken.id))
            ]

    def authenticate(self, token: str) -> Principal | None:
        """The principal of an active token, or None (unknown, revoked or malformed)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        with self._sessions.begin() as session:
            row = session.scalar(
                select(ApiToken).where(
                    ApiToken.token_sha256 == token_digest(token), ApiToken.revoked_at.is_(None)
                )
            )
            if row is None:
                return None
            row.last_used_at = utcnow()
            return Principal(row.name, row.role, row.show_patient)


class JobAdmin:
    """Retry, cancel, re-run and delete jobs; every action is an event with its actor."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    @staticmethod
    def _job(session: Session, job_id: int) -> Job:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise ActionError(f"job {job_id} not found", missing=True)
        return job

    def retry(self, job_id: int, actor: str, force: bool = False) -> JobStatus:
        """FAILED → QUEUED (published again by the completion monitor); a skipped series
        whose untouched forward failed goes back to SKIPPED, to be forwarded again.

        With ``force``, also a job left RUNNING or SENDING by a worker that died.
        """
        allowed = {JobStatus.FAILED} | ({JobStatus.RUNNING, JobStatus.SENDING} if force else set())
        with self._sessions.begin() as session:
            job = self._job(session, job_id)
            if job.status not in allowed:
                hint = "" if force else " (use force for a job stuck RUNNING or SENDING)"
                raise ActionError(f"job {job_id} is {job.status.value}, not FAILED{hint}")
            # Due at once, with a fresh attempt count, and no longer held by the worker
            # that ran it (which, if alive, can no longer send or finish it).
            values: dict[str, object] = {
                "dispatched_at": None, "next_attempt_at": None, "attempts": 0,
                "lease_owner": None, "lease_expires_at": None,
            }  # fmt: skip
            message = f"retry requested by {actor}"
            if job.error_code == "forward_failed":
                values.update(error_code="skipped", error_message=_skip_reason(job))
                status, message = JobStatus.SKIPPED, message + "; forwarding again"
            else:
                status = JobStatus.QUEUED
            lifecycle.move(session, job_id, status, message, actor=actor, expect=[job.status],
                           values=values)  # fmt: skip
            return status

    def release(self, job_id: int, actor: str) -> None:
        """HELD → QUEUED: send the output the QA gate held, as it is (a worker sends the
        stored derived instances; if it must enhance again, the gate's verdict is recorded
        but no longer stops the send)."""
        with self._sessions.begin() as session:
            job = self._job(session, job_id)
            if job.status is not JobStatus.HELD:
                raise ActionError(f"job {job_id} is {job.status.value}, not HELD")
            report = json.loads(job.qa) if job.qa else {}
            report.update(released_by=actor, released_at=utcnow().isoformat())
            lifecycle.move(session, job_id, JobStatus.QUEUED,
                           f"output held by the QA gate released by {actor}; sending it",
                           actor=actor, expect=[JobStatus.HELD],
                           values={"qa": json.dumps(report), "dispatched_at": None,
                                   "next_attempt_at": None, "attempts": 0})  # fmt: skip

    def reject(self, job_id: int, actor: str) -> None:
        """HELD → FAILED (``qa_rejected``): the held output is never sent; the derived
        files stay until retention or a delete removes them."""
        with self._sessions.begin() as session:
            job = self._job(session, job_id)
            if job.status is not JobStatus.HELD:
                raise ActionError(f"job {job_id} is {job.status.value}, not HELD")
            lifecycle.move(session, job_id, JobStatus.FAILED,
                           f"output held by the QA gate rejected by {actor}",
                           actor=actor, expect=[JobStatus.HELD],
                           error_code="qa_rejected")  # fmt: skip

    def cancel(self, job_id: int, actor: str) -> None:
        """RECEIVING or QUEUED → FAILED ("cancelled"); a running job cannot be stopped."""
        with self._sessions.begin() as session:
            job = self._job(session, job_id)
            if job.status not in (JobStatus.RECEIVING, JobStatus.QUEUED):
                raise ActionError(
                    f"job {job_id} is {job.status.value}; only RECEIVING or QUEUED jobs "
                    "can be cancelled"
                )
            lifecycle.move(session, job_id, JobStatus.FAILED, f"cancelled by {actor}",
                           actor=actor, error_code="cancelled", expect=[job.status])  # fmt: skip

    def rerun(
        self, job_id: int, actor: str, preset: str | None = None, strength: str | None = None
    ) -> int:
        """A new QUEUED job on the same series (another preset, or the same); returns its id.

        The source job must be finished; its destinations are kept.
        """
        with self._sessions.begin() as session:
            job = self._job(session, job_id)
            if not job.status.finished:
                raise ActionError(f"job {job_id} is {job.status.value}; wait until it finishes")
            chosen = preset or job.preset
            if chosen is None:
                raise ActionError(f"job {job_id} had no preset; name one to re-run it")
            now = utcnow()
            new = Job(
                series_id=job.series_id, status=JobStatus.QUEUED, rule=f"re-run of job {job_id}",
                preset=chosen, strength=strength or job.strength, destinations=job.destinations,
                forward_skipped=False, qa_policy=job.qa_policy,
                calling_ae_title=job.calling_ae_title,
                called_ae_title=job.called_ae_title, instance_count=job.instance_count,
                attempts=0, created_at=now, updated_at=now, last_instance_at=job.last_instance_at,
            )  # fmt: skip
            lifecycle.start(session, new, f"re-run of job {job_id} with preset {chosen} by {actor}",
                            actor)  # fmt: skip
            again = f"re-run as job {new.id} with preset {chosen} by {actor}"
            lifecycle.note(session, job_id, again, actor)
            return new.id

    def delete(self, job_id: int, actor: str) -> list[Path]:
        """Delete a finished job with its derived files, and the received series when no
        other job uses it. Returns the files removed (missing ones are ignored)."""
        with self._sessions.begin() as session:
            job = session.get(
                Job, job_id,
                options=[selectinload(Job.outputs), selectinload(Job.events),
                         selectinload(Job.series)],
            )  # fmt: skip
            if job is None:
                raise ActionError(f"job {job_id} not found", missing=True)
            if not job.status.finished:
                raise ActionError(
                    f"job {job_id} is {job.status.value}; only finished jobs can be deleted"
                )
            files = [Path(o.path) for o in job.outputs]
            series_id = job.series_id
            session.add(_tombstone(job, actor))
            others = session.scalar(
                select(Job.id).where(Job.series_id == series_id, Job.id != job_id).limit(1)
            )
            session.execute(update(Instance).where(Instance.job_id == job_id).values(job_id=None))
            session.delete(job)  # its events and outputs go with it (cascade)
            if others is None:
                instances = session.scalars(select(Instance).where(Instance.series_id == series_id))
                files += [Path(i.path) for i in instances]
                session.execute(delete(Instance).where(Instance.series_id == series_id))
                session.execute(delete(Series).where(Series.id == series_id))
        removed = []
        for path in files:
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                continue
        logger.info("job %d deleted by %s (%d files)", job_id, actor, len(removed))
        return removed
