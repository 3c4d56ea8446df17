"""The job state machine: every change of a job's status, and every line of its audit
trail, is written here and nowhere else.

Each function works inside the caller's transaction (a :class:`~sqlalchemy.orm.Session`),
so a change and its event row commit together or not at all. A change is a conditional
``UPDATE``: it applies only while the job is in a state allowed to reach the new one (and
any further condition the caller gives, such as a worker's lease), so two processes racing
for the same job cannot both win.

::

    RECEIVING ──▶ QUEUED ──▶ RUNNING ──▶ SENDING ──▶ DONE
        │  │         │  ▲       │  ▲        │
        │  └─────────┴──┼───────┴──┼────────┴──▶ FAILED ──▶ QUEUED (retry)
        ▼               │       │  │                │
     SKIPPED ◀──────────┼───────┘  back to QUEUED   └──▶ SKIPPED (retry of a forward)
        │   QA failed:  │          (lease expired, send retry)
        │   send_original
        ▼               │
     FAILED (forward)   └── HELD ◀── RUNNING (QA failed: hold)
                            │  released by an admin: QUEUED (the output is sent)
                            └─ rejected by an admin: FAILED
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from pacs_node.db.models import Job, JobEvent, JobStatus, utcnow

R, Q, RUN, S, D, F, K, H = (
    JobStatus.RECEIVING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SENDING,
    JobStatus.DONE, JobStatus.FAILED, JobStatus.SKIPPED, JobStatus.HELD,
)  # fmt: skip

# Which states each state may move to. Finished states leave only by an admin's retry.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    R: frozenset({Q, K, F}),  # series complete; nothing to do for it; cancelled
    Q: frozenset({RUN, F}),  # claimed by a worker; cancelled
    # Q: lease expired, or retried by an admin; H, K: the QA gate's hold and send_original
    RUN: frozenset({S, D, F, Q, H, K}),
    S: frozenset({D, F, Q}),  # Q: a send to retry later, lease expired, admin retry
    D: frozenset(),
    F: frozenset({Q, K}),  # retry: enhance again, or forward again
    K: frozenset({F}),  # forwarding untouched failed for good
    H: frozenset({Q, F}),  # an admin released (send the output) or rejected it
}

# States the system or an admin may leave a job in for good; FAILED carries a reason.
FINISHED = frozenset(s for s in JobStatus if s.finished)


class IllegalTransition(ValueError):
    """A programming error: the code asked for a change the state machine forbids."""


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every state allowed to move to ``target``."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def _event(session: Session, job_id: int, status: JobStatus, message: str, actor: str) -> None:
    session.add(JobEvent(job_id=job_id, status=status, message=message, actor=actor[:64]))


def start(session: Session, job: Job, message: str, actor: str = "node") -> Job:
    """Insert a new job (RECEIVING when its first instance arrives, QUEUED for a re-run)
    with its first event; returns it with its id."""
    if job.status not in (R, Q):
        raise IllegalTransition(f"a job starts RECEIVING or QUEUED, not {job.status.value}")
    session.add(job)
    session.flush()
    _event(session, job.id, job.status, message, actor)
    return job


def move(
    session: Session,
    job_id: int,
    to: JobStatus,
    message: str,
    *,
    actor: str = "node",
    expect: Iterable[JobStatus] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    values: Mapping[str, object] | None = None,
    error_code: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Move job ``job_id`` to ``to`` and append the event; False (and nothing written)
    when the job is not in an allowed state or ``where`` does not hold.

    ``expect`` narrows the states the job may be in (by default every state allowed to
    reach ``to``); ``values`` sets further columns in the same ``UPDATE``. FAILED records
    ``error_code`` (default ``"error"``) and the message as the reason; a finished state
    records when it finished.

    Raises
    ------
    IllegalTransition
        ``expect`` names a state that may not move to ``to``.
    """
    allowed = sources_of(to)
    origins = allowed if expect is None else frozenset(expect)
    if not origins or not origins <= allowed:
        bad = ", ".join(sorted(s.value for s in origins - allowed)) or "nothing"
        raise IllegalTransition(f"{bad} may not move to {to.value}")
    now = now or utcnow()
    changes: dict[str, object] = {"status": to, "updated_at": now}
    if to is F:
        changes.update(error_code=error_code or "error", error_message=message)
    elif to in (Q, RUN, S, H):
        changes.update(error_code=None, error_message=None, finished_at=None)
    if to in FINISHED:
        changes["finished_at"] = now
    changes.update(values or {})
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status.in_(list(origins)), *where).values(**changes)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    _event(session, job_id, to, message, actor)
    return True


def note(session: Session, job_id: int, message: str, actor: str = "node") -> bool:
    """Append an audit line under the job's current status; False if there is no such job."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        return False
    _event(session, job_id, status, message, actor)
    return True
