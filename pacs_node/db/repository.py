"""Every read and write of the job database, as short transactions with plain results."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from pacs_node.db import lifecycle
from pacs_node.db.models import (
    Instance,
    Job,
    JobOutput,
    JobStatus,
    JobTombstone,
    Series,
    WorkerHeartbeat,
    utcnow,
)
from pacs_node.db.session import READ_ONLY
from pacs_node.errors import EnhancementError


class LeaseLost(EnhancementError):
    """A worker acted on a job it no longer holds (its lease expired and the job was taken
    back); nothing was changed."""

    code = "lease_lost"


# Statuses in which a worker holds the job (and its lease).
_LEASED = (JobStatus.RUNNING, JobStatus.SENDING)


def _held_by(owner: str | None) -> list[ColumnElement[bool]]:
    """With ``owner``, the condition that this worker holds the job's lease."""
    return [Job.lease_owner == owner] if owner is not None else []


@dataclass(frozen=True)
class ReceivedInstance:
    """What the receiver knows of one instance it has just written to disk."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    path: str
    size_bytes: int
    calling_ae_title: str | None
    called_ae_title: str | None
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    source: str | None = None  # how it came, for the audit trail (default: the calling AE)


@dataclass(frozen=True)
class Route:
    """What the routing rule chose for a new job (``preset`` None: not enhanced)."""

    preset: str | None
    destinations: Sequence[Mapping[str, Any]] = ()
    rule: str | None = None
    strength: str | None = None
    forward_skipped: bool = False
    qa_failure: str | None = None  # the rule's QA failure policy; None: the worker's


@dataclass(frozen=True)
class StoreOutcome:
    """Result of recording an instance: its job and whether it was already known."""

    job_id: int | None
    duplicate: bool


@dataclass(frozen=True)
class EventView:
    """One audit-trail line."""

    at: datetime
    status: JobStatus
    message: str
    actor: str


@dataclass(frozen=True)
class OutputView:
    """One derived instance and its send result."""

    sop_instance_uid: str
    source_sop_instance_uid: str
    path: str
    send_status: int | None
    send_message: str | None
    sent_at: datetime | None
    # Its series: the job's derived series, or a secondary one (the uncertainty map).
    series_instance_uid: str | None = None


@dataclass(frozen=True)
class InputView:
    """One received instance of a job."""

    sop_instance_uid: str
    sop_class_uid: str
    path: str


@dataclass(frozen=True)
class JobView:
    """A job as the CLI, API and worker see it, detached from any session."""

    id: int
    status: JobStatus
    rule: str | None
    preset: str | None
    strength: str | None
    destinations: list[dict[str, Any]]
    forward_skipped: bool
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    calling_ae_title: str | None
    called_ae_title: str | None
    instance_count: int
    attempts: int
    error_code: str | None
    error_message: str | None
    output_series_instance_uid: str | None
    created_at: datetime
    updated_at: datetime
    last_instance_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    events: list[EventView] = field(default_factory=list)
    outputs: list[OutputView] = field(default_factory=list)
    # The QA gate's report of the last enhancement (pacs_node/qa.py) and the rule's policy.
    qa: dict[str, Any] | None = None
    qa_policy: str | None = None

    @property
    def secondary_outputs(self) -> list[OutputView]:
        """Outputs of a series other than the derived one (the uncertainty map)."""
        return [o for o in self.outputs if o.series_instance_uid != self.output_series_instance_uid]


def _view(job: Job, *, details: bool) -> JobView:
    return JobView(
        id=job.id,
        status=job.status,
        rule=job.rule,
        preset=job.preset,
        strength=job.strength,
        destinations=json.loads(job.destinations or "[]"),
        forward_skipped=bool(job.forward_skipped),
        study_instance_uid=job.series.study_instance_uid,
        series_instance_uid=job.series.series_instance_uid,
        modality=job.series.modality,
        series_number=job.series.series_number,
        series_description=job.series.series_description,
        patient_id=job.series.patient_id,
        patient_name=job.series.patient_name,
        accession_number=job.series.accession_number,
        calling_ae_title=job.calling_ae_title,
        called_ae_title=job.called_ae_title,
        instance_count=job.instance_count,
        attempts=job.attempts,
        error_code=job.error_code,
        error_message=job.error_message,
        output_series_instance_uid=job.output_series_instance_uid,
        created_at=job.created_at,
        updated_at=job.updated_at,
        last_instance_at=job.last_instance_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        qa=json.loads(job.qa) if job.qa else None,
        qa_policy=job.qa_policy,
        events=[EventView(e.at, e.status, e.message, e.actor) for e in job.events]
        if details
        else [],
        outputs=[
            OutputView(
                o.sop_instance_uid,
                o.source_sop_instance_uid,
                o.path,
                o.send_status,
                o.send_message,
                o.sent_at,
                o.series_instance_uid or job.output_series_instance_uid,
            )
            for o in job.outputs
        ]
        if details
        else [],
    )


class _NotOpen(Exception):
    """The job the hot path expected is no longer RECEIVING."""


OPEN_SERIES_CACHE = 1024  # series whose open job a process remembers

# The receive path's statements, built once (building a statement costs more than SQLite
# takes to run it).
_FIND_INSTANCES = select(Instance.sop_instance_uid).where(
    Instance.sop_instance_uid.in_(bindparam("uids", expanding=True))
)
# Counts instances on a job that is still RECEIVING and still belongs to its series: ids of
# deleted rows may be reused (SQLite), so the series UID is checked too.
_COUNT_ON_OPEN_JOB = (
    update(Job)
    .where(
        Job.id == bindparam("p_job_id"),
        Job.status == JobStatus.RECEIVING,
        Job.series_id == bindparam("p_series_id"),
        select(Series.id)
        .where(Series.id == bindparam("p_series_id"),
               Series.series_instance_uid == bindparam("p_series_uid"))
        .exists(),
    )
    .values(instance_count=Job.instance_count + bindparam("p_count"),
            last_instance_at=bindparam("p_now"), updated_at=bindparam("p_now"))
)  # fmt: skip
_INSERT_INSTANCE = insert(Instance)


class JobRepository:
    """The job database behind one session factory; each method is one transaction."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory
        # Series UID -> (series id, id of its RECEIVING job) as this process last saw them:
        # the next instance of the series is then two statements (see _append_many).
        self._open: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._open_lock = threading.Lock()

    @property
    def session_factory(self) -> sessionmaker[Session]:
        """The session factory (for other read-only views of the same database)."""
        return self._sessions

    # -- receiving -----------------------------------------------------------------

    def _engine(self) -> Engine:
        bind = self._sessions.kw["bind"]
        assert isinstance(bind, Engine)
        return bind

    def find_instance(self, sop_instance_uid: str, *, settled: bool = False) -> bool:
        """Whether an instance with this SOP Instance UID is already stored.

        By default the answer is the last commit's, without waiting for writers. With
        ``settled`` on SQLite the lookup first waits for a transaction in flight (it takes
        the write lock), so a row another association is committing is seen too: asked
        before removing a file such a row may name. (PostgreSQL reads never wait.)
        """
        options = {} if settled else {READ_ONLY: True}
        with self._engine().connect().execution_options(**options) as connection:
            found = connection.scalar(
                select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
            )
            return found is not None

    def output_paths_in_use(self, paths: Sequence[str]) -> set[str]:
        """Which of these derived-file paths an output row of any job names."""
        if not paths:
            return set()
        with self._engine().connect() as connection:
            return set(
                connection.scalars(select(JobOutput.path).where(JobOutput.path.in_(list(paths))))
            )

    def find_instances(self, sop_instance_uids: Sequence[str]) -> set[str]:
        """Which of these SOP Instance UIDs are already stored (one query; the last
        commit's answer, as :meth:`find_instance`)."""
        with self._engine().connect().execution_options(**{READ_ONLY: True}) as connection:
            return set(connection.scalars(_FIND_INSTANCES, {"uids": list(sop_instance_uids)}))

    def _remember_open(self, series_uid: str, series_id: int, job_id: int) -> None:
        with self._open_lock:
            self._open[series_uid] = (series_id, job_id)
            self._open.move_to_end(series_uid)
            while len(self._open) > OPEN_SERIES_CACHE:
                self._open.popitem(last=False)

    def _append_many(
        self, received: Sequence[ReceivedInstance], series_id: int, job_id: int
    ) -> bool:
        """The hot path: more instances of a series whose RECEIVING job this process knows,
        in one transaction of two statements: all are recorded, or none (False: the job is
        no longer RECEIVING or an instance is a duplicate; the full path decides each)."""
        now = utcnow()
        series_uid = received[0].series_instance_uid
        try:
            with self._engine().begin() as connection:
                counted = connection.execute(_COUNT_ON_OPEN_JOB, {
                    "p_job_id": job_id, "p_series_id": series_id, "p_series_uid": series_uid,
                    "p_count": len(received), "p_now": now,
                })  # fmt: skip
                if counted.rowcount != 1:
                    raise _NotOpen
                connection.execute(_INSERT_INSTANCE, [
                    {"series_id": series_id, "job_id": job_id,
                     "sop_instance_uid": item.sop_instance_uid,
                     "sop_class_uid": item.sop_class_uid,
                     "transfer_syntax_uid": item.transfer_syntax_uid, "path": item.path,
                     "size_bytes": item.size_bytes, "calling_ae_title": item.calling_ae_title,
                     "received_at": now}
                    for item in received
                ])  # fmt: skip
        except (_NotOpen, IntegrityError):
            with self._open_lock:
                self._open.pop(series_uid, None)
            return False
        return True

    def record_instances(
        self,
        received: Sequence[ReceivedInstance],
        route: Callable[[ReceivedInstance], Route],
    ) -> list[StoreOutcome | Exception]:
        """:meth:`record_instance` for a batch (a STOW-RS request), in order; an instance
        that cannot be recorded gets its exception in its place, the others are recorded.

        Instances of a series whose RECEIVING job is open (or opened by the batch's first
        instance of it) are recorded in one transaction per series; a duplicate or a job
        closed meanwhile sends that series back to the path of one instance at a time.
        """
        outcomes: list[StoreOutcome | Exception | None] = [None] * len(received)

        def one(index: int) -> None:
            item = received[index]
            try:
                outcomes[index] = self.record_instance(item, lambda: route(item))
            except Exception as exc:  # noqa: BLE001 - reported per instance by the caller
                outcomes[index] = exc

        by_series: dict[str, list[int]] = {}
        for index, item in enumerate(received):
            by_series.setdefault(item.series_instance_uid, []).append(index)
        for series_uid, indices in by_series.items():
            uids = [received[i].sop_instance_uid for i in indices]
            if len(set(uids)) != len(uids):  # a repeat inside the request: one at a time
                for index in indices:
                    one(index)
                continue
            rest = indices
            if series_uid not in self._open:
                one(indices[0])  # opens (or finds) the series' job
                rest = indices[1:]
            known = self._open.get(series_uid)
            if rest and known is not None and self._append_many([received[i] for i in rest],
                                                                *known):  # fmt: skip
                for index in rest:
                    outcomes[index] = StoreOutcome(job_id=known[1], duplicate=False)
                continue
            for index in rest:
                one(index)
        return [o if o is not None else RuntimeError("not recorded") for o in outcomes]

    def record_instance(
        self, received: ReceivedInstance, route: Route | Callable[[], Route]
    ) -> StoreOutcome:
        """Record a stored instance and attach it to its series' open job.

        The series' job in RECEIVING is reused; if the series has none (first
        instance, or new instances after an earlier job finished) one is created with
        ``route`` (a callable is called only then, so routing runs once per series).
        A duplicate SOP Instance UID changes nothing and is reported as such.
        """
        known = self._open.get(received.series_instance_uid)
        if known is not None and self._append_many([received], *known):
            return StoreOutcome(job_id=known[1], duplicate=False)
        for attempt in range(3):
            try:
                return self._record_instance_once(received, route)
            except IntegrityError:
                # A concurrent association inserted the same series or instance first
                # (PostgreSQL); the next attempt sees its row.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record_instance_once(
        self, received: ReceivedInstance, route: Route | Callable[[], Route]
    ) -> StoreOutcome:
        now = utcnow()
        with self._sessions.begin() as session:
            existing = session.scalar(
                select(Instance).where(Instance.sop_instance_uid == received.sop_instance_uid)
            )
            if existing is not None:
                return StoreOutcome(job_id=existing.job_id, duplicate=True)
            # FOR NO KEY UPDATE (PostgreSQL): serialises job creation per series, yet lets
            # the hot path's instance insert take its foreign-key share lock meanwhile
            # (FOR UPDATE would deadlock with it).
            series = session.scalar(
                select(Series)
                .where(Series.series_instance_uid == received.series_instance_uid)
                .with_for_update(key_share=True)
            )
            if series is None:
                series = Series(
                    study_instance_uid=received.study_instance_uid,
                    series_instance_uid=received.series_instance_uid,
                    modality=received.modality,
                    series_number=received.series_number,
                    series_description=received.series_description,
                    patient_id=received.patient_id,
                    patient_name=received.patient_name,
                    study_date=received.study_date,
                    accession_number=received.accession_number,
                    study_description=received.study_description,
                    created_at=now,
                )
                session.add(series)
                session.flush()
            job = session.scalar(
                select(Job).where(Job.series_id == series.id, Job.status == JobStatus.RECEIVING)
                .with_for_update(key_share=True)  # not closed while this instance joins it
            )  # fmt: skip
            if job is None:
                if callable(route):
                    route = route()
                job = Job(
                    series_id=series.id,
                    status=JobStatus.RECEIVING,
                    rule=route.rule,
                    preset=route.preset,
                    strength=route.strength,
                    destinations=json.dumps(list(route.destinations)),
                    forward_skipped=route.forward_skipped,
                    qa_policy=route.qa_failure,
                    calling_ae_title=received.calling_ae_title,
                    called_ae_title=received.called_ae_title,
                    instance_count=0,
                    attempts=0,
                    created_at=now,
                    updated_at=now,
                    last_instance_at=now,
                )
                source = received.source or received.calling_ae_title or "?"
                message = f"first instance received from {source}"
                if route.rule is not None:
                    message += f"; rule {route.rule!r}: preset {route.preset or '(none)'}"
                lifecycle.start(session, job, message)
            # An increment in SQL: the hot path (_append_many) counts without the series lock.
            job.instance_count = Job.instance_count + 1
            job.last_instance_at = now
            session.add(
                Instance(
                    series_id=series.id,
                    job_id=job.id,
                    sop_instance_uid=received.sop_instance_uid,
                    sop_class_uid=received.sop_class_uid,
                    transfer_syntax_uid=received.transfer_syntax_uid,
                    path=received.path,
                    size_bytes=received.size_bytes,
                    calling_ae_title=received.calling_ae_title,
                    received_at=now,
                )
            )
            opened = (series.id, job.id)
        self._remember_open(received.series_instance_uid, *opened)
        return StoreOutcome(job_id=opened[1], duplicate=False)

    # -- completion and dispatch -----------------------------------------------------

    def request_completion(self, series_instance_uids: Iterable[str], source: str) -> list[int]:
        """The sender declared these series complete: their RECEIVING jobs close once quiet
        for the declared period (``dicomweb.complete_after_s``) instead of the full one.
        Returns the affected job ids."""
        now = utcnow()
        with self._sessions.begin() as session:
            jobs = session.scalars(
                select(Job)
                .join(Series)
                .where(
                    Series.series_instance_uid.in_(list(series_instance_uids)),
                    Job.status == JobStatus.RECEIVING,
                )
            ).all()
            for job in jobs:
                job.complete_requested_at = now
                lifecycle.note(session, job.id, f"series declared complete by {source}")
            return [job.id for job in jobs]

    @staticmethod
    def _closable(cutoff: datetime, declared_cutoff: datetime) -> ColumnElement[bool]:
        """Quiet since ``cutoff``, or declared complete after its last instance and quiet
        since ``declared_cutoff``."""
        return or_(
            Job.last_instance_at <= cutoff,
            and_(
                Job.complete_requested_at.is_not(None),
                Job.complete_requested_at >= Job.last_instance_at,
                Job.last_instance_at <= declared_cutoff,
            ),
        )

    def due_receiving_jobs(
        self, quiet_for: timedelta, declared_quiet_for: timedelta = timedelta(0)
    ) -> list[int]:
        """Jobs in RECEIVING quiet for ``quiet_for``, or declared complete by their sender
        (the end of a STOW-RS request) and quiet for ``declared_quiet_for``."""
        now = utcnow()
        with self._sessions() as session:
            rows = session.scalars(
                select(Job.id)
                .where(Job.status == JobStatus.RECEIVING,
                       self._closable(now - quiet_for, now - declared_quiet_for))
                .order_by(Job.id)
            )  # fmt: skip
            return list(rows)

    def close_receiving(
        self,
        job_id: int,
        quiet_for: timedelta,
        skip_reason: str | None,
        declared_quiet_for: timedelta = timedelta(0),
    ) -> JobStatus | None:
        """Move a quiet RECEIVING job to QUEUED, or to SKIPPED with ``skip_reason``
        (quiet as :meth:`due_receiving_jobs` says).

        Returns the new status, or None when an instance arrived meanwhile (the
        job is still receiving) or another process closed it first.
        """
        now = utcnow()
        new_status = JobStatus.SKIPPED if skip_reason else JobStatus.QUEUED
        with self._sessions.begin() as session:
            count = session.scalar(select(Job.instance_count).where(Job.id == job_id))
            values: dict[str, object] = {}
            if skip_reason:
                values.update(error_code="skipped", error_message=skip_reason)
                message = f"series complete ({count} instances); skipped: {skip_reason}"
            else:
                message = f"series complete ({count} instances); queued"
            moved = lifecycle.move(
                session, job_id, new_status, message, expect=[JobStatus.RECEIVING],
                where=[self._closable(now - quiet_for, now - declared_quiet_for)],
                values=values,
            )  # fmt: skip
            return new_status if moved else None

    def undispatched_jobs(self) -> list[int]:
        """QUEUED jobs whose task has not been handed to the broker yet (those waiting for
        a retry only once their time has come)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(Job.id)
                .where(
                    Job.status == JobStatus.QUEUED,
                    Job.dispatched_at.is_(None),
                    or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= utcnow()),
                )
                .order_by(Job.id)
            )
            return list(rows)

    def undispatched_forwards(self) -> list[int]:
        """SKIPPED jobs whose rule forwards skipped series untouched, not yet handed over."""
        with self._sessions() as session:
            rows = session.scalars(
                select(Job.id)
                .where(
                    Job.status == JobStatus.SKIPPED,
                    Job.forward_skipped.is_(True),
                    Job.destinations != "[]",
                    Job.dispatched_at.is_(None),
                    or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= utcnow()),
                )
                .order_by(Job.id)
            )
            return list(rows)

    def mark_dispatched(self, job_id: int) -> None:
        """Remember that the job's task is in the broker."""
        with self._sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(dispatched_at=utcnow()))

    def used_series_numbers(self, study_instance_uid: str) -> set[int]:
        """Series numbers of every series of the study this node has seen."""
        with self._sessions() as session:
            rows = session.scalars(
                select(Series.series_number).where(
                    Series.study_instance_uid == study_instance_uid,
                    Series.series_number.is_not(None),
                )
            )
            return {int(n) for n in rows if n is not None}

    # -- the worker ------------------------------------------------------------------

    def claim(self, job_id: int, worker: str = "worker", lease: timedelta | None = None) -> bool:
        """Atomically move QUEUED → RUNNING; False if the job is not QUEUED (a duplicate task).

        With ``lease``, ``worker`` holds the job until now + ``lease``; it renews the lease
        while it runs (:meth:`renew_leases`), and :meth:`reclaim_expired` takes back the job
        of a worker that stopped renewing.
        """
        now = utcnow()
        with self._sessions.begin() as session:
            attempts = session.scalar(select(Job.attempts).where(Job.id == job_id))
            return lifecycle.move(
                session, job_id, JobStatus.RUNNING, f"attempt {(attempts or 0) + 1} on {worker}",
                actor=worker, now=now,
                # The attempt counted is the one read above: a concurrent claim changed it.
                where=[Job.attempts == (attempts or 0)],
                values={
                    "attempts": Job.attempts + 1,
                    "started_at": func.coalesce(Job.started_at, now),
                    "lease_owner": worker,
                    "lease_expires_at": now + lease if lease is not None else None,
                },
            )  # fmt: skip

    def renew_leases(self, worker: str, lease: timedelta, except_jobs: Sequence[int] = ()) -> int:
        """Extend the leases ``worker`` holds on running jobs to now + ``lease``, except
        on ``except_jobs`` (past their hard time limit); how many."""
        with self._sessions.begin() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.lease_owner == worker,
                    Job.status.in_(_LEASED),
                    Job.id.not_in(list(except_jobs)),
                )
                .values(lease_expires_at=utcnow() + lease)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    def reclaim_expired(self, max_attempts: int) -> list[tuple[int, JobStatus]]:
        """Take back every running job whose lease expired (its worker died or hung).

        A job with attempts left goes back to QUEUED, undispatched, so the completion
        monitor publishes it again; one that has used ``max_attempts`` becomes FAILED
        (``worker_lost``) with the reason. Each change is conditional on the lease being
        unchanged, so a worker renewing at that moment keeps its job.
        """
        now = utcnow()
        changed: list[tuple[int, JobStatus]] = []
        with self._sessions() as session:
            expired = session.execute(
                select(Job.id, Job.lease_owner, Job.lease_expires_at, Job.attempts).where(
                    Job.status.in_(_LEASED), Job.lease_expires_at < now
                )
            ).all()
        for job_id, owner, expires, attempts in expired:
            lost = f"worker {owner} stopped renewing its lease (expired {expires:%H:%M:%S} UTC)"
            if attempts >= max_attempts:
                status = JobStatus.FAILED
                message = f"{lost}; attempt {attempts} of {max_attempts}, giving up"
                values: dict[str, object] = {"error_code": "worker_lost"}
            else:
                status = JobStatus.QUEUED
                message = f"{lost}; queued again (attempt {attempts} of {max_attempts} used)"
                values = {"dispatched_at": None}
            with self._sessions.begin() as session:
                moved = lifecycle.move(
                    session, job_id, status, message, actor="reconciler", expect=_LEASED,
                    where=[Job.lease_owner == owner, Job.lease_expires_at == expires],
                    values={"lease_owner": None, "lease_expires_at": None, **values}, now=now,
                )  # fmt: skip
            if moved:  # else renewed or finished meanwhile
                changed.append((job_id, status))
        return changed

    def schedule_retry(
        self, job_id: int, delay: timedelta, message: str, owner: str | None = None
    ) -> None:
        """Put the job back in the queue to run again after ``delay`` (its sends failed
        for a reason that may pass); the completion monitor publishes it when it is due.
        With ``owner``, only while that worker holds the job (else :class:`LeaseLost`)."""
        now = utcnow()
        with self._sessions.begin() as session:
            moved = lifecycle.move(
                session, job_id, JobStatus.QUEUED, message, expect=_LEASED, now=now,
                where=_held_by(owner), actor=owner or "node",
                values={"dispatched_at": None, "next_attempt_at": now + delay,
                        "lease_owner": None, "lease_expires_at": None},
            )  # fmt: skip
            if not moved:
                raise LeaseLost(f"job {job_id} is no longer held by {owner or 'a worker'}")

    def redispatch_stale(self, older_than: timedelta) -> list[int]:
        """QUEUED jobs no worker took for ``older_than`` since they were queued: their broker
        message may be lost (a broker restarted without its data). They are marked
        undispatched, so the completion monitor publishes them again; a second message
        for a job that is still queued is harmless, since only one claim can succeed."""
        now = utcnow()
        with self._sessions.begin() as session:
            stale = list(
                session.scalars(
                    select(Job.id).where(
                        Job.status == JobStatus.QUEUED,
                        Job.dispatched_at.is_not(None),
                        Job.updated_at < now - older_than,
                    )
                )
            )
            for job_id in stale:
                session.execute(
                    update(Job).where(Job.id == job_id).values(dispatched_at=None, updated_at=now)
                )
                lifecycle.note(
                    session, job_id,
                    f"no worker took the job in {older_than.total_seconds():.0f} s; "
                    "published again", actor="reconciler",
                )  # fmt: skip
            return stale

    def forward_failed(
        self, job_id: int, message: str, delay: timedelta | None, max_attempts: int
    ) -> JobStatus | None:
        """A SKIPPED job's untouched forward failed: publish it again after ``delay``
        (scheduled in the database, so the retry survives restarts), or, once
        ``max_attempts`` forwards failed or with no ``delay``, make it FAILED (the dead
        letter, retried by an admin). Returns the job's status, None if it is not SKIPPED."""
        now = utcnow()
        with self._sessions.begin() as session:
            attempts = session.scalar(
                select(Job.attempts).where(Job.id == job_id, Job.status == JobStatus.SKIPPED)
            )
            if attempts is None:
                return None
            attempts += 1
            if delay is None or attempts >= max_attempts:
                suffix = f" (after {attempts} attempts)" if delay is not None else ""
                lifecycle.move(
                    session, job_id, JobStatus.FAILED, f"not forwarded: {message}{suffix}",
                    error_code="forward_failed", values={"attempts": attempts}, now=now,
                )  # fmt: skip
                return JobStatus.FAILED
            session.execute(
                update(Job).where(Job.id == job_id).values(
                    attempts=attempts, dispatched_at=None, next_attempt_at=now + delay,
                    updated_at=now,
                )
            )  # fmt: skip
            lifecycle.note(
                session, job_id,
                f"{message}; forwarding retry {attempts + 1} in {delay.total_seconds():.0f} s",
            )  # fmt: skip
            return JobStatus.SKIPPED

    def transition(
        self,
        job_id: int,
        status: JobStatus,
        message: str = "",
        *,
        error_code: str | None = None,
        actor: str = "node",
        owner: str | None = None,
    ) -> None:
        """Set the job's status and append the event, in one transaction.

        With ``owner`` (a worker), only while that worker still holds the job's lease: a
        worker whose job was taken back (its lease expired) cannot send or finish it.

        Raises
        ------
        LeaseLost
            If ``owner`` no longer holds the job.
        IllegalTransition
            Without ``owner``: the job's state may not move to ``status``.
        """
        with self._sessions.begin() as session:
            moved = lifecycle.move(
                session, job_id, status, message, actor=actor, error_code=error_code,
                where=_held_by(owner),
                expect=[s for s in _LEASED if status in lifecycle.TRANSITIONS[s]]
                if owner is not None else None,
            )  # fmt: skip
        if not moved:
            if owner is not None:
                raise LeaseLost(f"job {job_id} is no longer held by {owner}")
            raise lifecycle.IllegalTransition(f"job {job_id} cannot move to {status.value} now")

    # -- the QA gate ------------------------------------------------------------------

    def record_qa(self, job_id: int, report: Mapping[str, Any], message: str, owner: str) -> None:
        """Store the gate's report in the job row with its summary as an event, while
        ``owner`` holds the job.

        Raises
        ------
        LeaseLost
            If ``owner`` no longer holds the job.
        """
        with self._sessions.begin() as session:
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.status.in_(_LEASED), *_held_by(owner))
                .values(qa=json.dumps(dict(report)), qa_verdict=str(report["verdict"]))
            )  # fmt: skip
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise LeaseLost(f"job {job_id} is no longer held by {owner}")
            lifecycle.note(session, job_id, message, actor=owner)

    def qa_outcome(self, job_id: int, to: JobStatus, message: str, owner: str) -> None:
        """The gate failed an output: HELD (the ``hold`` policy; nothing sent until an admin
        decides) or SKIPPED with the source forwarded untouched (``send_original``); the
        worker's lease ends either way.

        Raises
        ------
        LeaseLost
            If ``owner`` no longer holds the job.
        """
        values: dict[str, object] = {"lease_owner": None, "lease_expires_at": None}
        if to is JobStatus.SKIPPED:  # the completion monitor publishes the forward
            values.update(forward_skipped=True, dispatched_at=None, next_attempt_at=None,
                          attempts=0, error_code="qa_failed", error_message=message)  # fmt: skip
        elif to is not JobStatus.HELD:
            raise lifecycle.IllegalTransition(f"a QA outcome is HELD or SKIPPED, not {to.value}")
        with self._sessions.begin() as session:
            moved = lifecycle.move(session, job_id, to, message, actor=owner,
                                   expect=[JobStatus.RUNNING], where=_held_by(owner),
                                   values=values)  # fmt: skip
        if not moved:
            raise LeaseLost(f"job {job_id} is no longer held by {owner}")

    def add_event(self, job_id: int, message: str) -> None:
        """Append an audit line without changing the status."""
        with self._sessions.begin() as session:
            lifecycle.note(session, job_id, message)

    def tombstone(self, job_id: int) -> dict[str, Any] | None:
        """What a deleted job left (who deleted it, when, its audit trail), or None."""
        with self._sessions() as session:
            row = session.scalars(
                select(JobTombstone).where(JobTombstone.job_id == job_id)
                .order_by(JobTombstone.id.desc()).limit(1)
            ).first()  # fmt: skip
            if row is None:
                return None
            values = {c.name: getattr(row, c.name) for c in JobTombstone.__table__.columns}
            values["events"] = json.loads(row.events)
            return values

    def job_inputs(self, job_id: int) -> list[InputView]:
        """The stored instances of the job's series (all of them, across receive sessions)."""
        with self._sessions() as session:
            series_id = session.scalar(select(Job.series_id).where(Job.id == job_id))
            rows = session.scalars(
                select(Instance).where(Instance.series_id == series_id).order_by(Instance.id)
            )
            return [InputView(r.sop_instance_uid, r.sop_class_uid, r.path) for r in rows]

    def replace_outputs(
        self,
        job_id: int,
        output_series_uid: str,
        outputs: Iterable[tuple[str, str, str]],
        secondary: Iterable[tuple[str, str, str, str]] = (),
    ) -> None:
        """Record the derived instances ``(sop_uid, source_sop_uid, path)`` of a job's
        derived series, and those of a secondary series (the uncertainty map) as
        ``(sop_uid, source_sop_uid, path, series_uid)``."""
        with self._sessions.begin() as session:
            job = session.get_one(Job, job_id, options=[selectinload(Job.outputs)])
            job.outputs.clear()
            session.flush()
            job.output_series_instance_uid = output_series_uid
            # New outputs are unmeasured until the QA gate records its report on them.
            job.qa, job.qa_verdict = None, None
            for sop_uid, source_uid, path in outputs:
                job.outputs.append(
                    JobOutput(
                        sop_instance_uid=sop_uid, source_sop_instance_uid=source_uid, path=path
                    )
                )
            for sop_uid, source_uid, path, series_uid in secondary:
                job.outputs.append(
                    JobOutput(
                        sop_instance_uid=sop_uid,
                        source_sop_instance_uid=source_uid,
                        path=path,
                        series_instance_uid=series_uid,
                    )
                )

    def record_send_results(
        self, job_id: int, results: Sequence[tuple[str, int | None, str]]
    ) -> None:
        """Store each derived instance's send status ``(sop_uid, status, message)``."""
        now = utcnow()
        by_uid = {uid: (status, message) for uid, status, message in results}
        with self._sessions.begin() as session:
            outputs = session.scalars(select(JobOutput).where(JobOutput.job_id == job_id))
            for output in outputs:
                if output.sop_instance_uid in by_uid:
                    output.send_status, output.send_message = by_uid[output.sop_instance_uid]
                    output.sent_at = now

    # -- workers -------------------------------------------------------------------

    def beat(self, worker: str) -> None:
        """Record that ``worker`` is alive now."""
        with self._sessions.begin() as session:
            row = session.get(WorkerHeartbeat, worker)
            if row is None:
                session.add(WorkerHeartbeat(name=worker, last_seen=utcnow()))
            else:
                row.last_seen = utcnow()

    def live_workers(self, within: timedelta) -> list[str]:
        """Workers seen in the last ``within``."""
        with self._sessions() as session:
            rows = session.scalars(
                select(WorkerHeartbeat.name).where(WorkerHeartbeat.last_seen >= utcnow() - within)
            )
            return list(rows)

    # -- reading ---------------------------------------------------------------------

    def get_job(self, job_id: int) -> JobView | None:
        """One job with its events and outputs."""
        with self._sessions() as session:
            job = session.get(
                Job,
                job_id,
                options=[
                    selectinload(Job.series),
                    selectinload(Job.events),
                    selectinload(Job.outputs),
                ],
            )
            return _view(job, details=True) if job is not None else None

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        preset: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        calling_ae_title: str | None = None,
        study_instance_uid: str | None = None,
        accession_number: str | None = None,
    ) -> list[JobView]:
        """Jobs, newest first, filtered by state, preset, creation time range, calling AE,
        study or accession number."""
        with self._sessions() as session:
            query = (
                select(Job).join(Series).options(selectinload(Job.series)).order_by(Job.id.desc())
            )
            if status is not None:
                query = query.where(Job.status == status)
            if preset is not None:
                query = query.where(Job.preset == preset)
            if since is not None:
                query = query.where(Job.created_at >= since)
            if until is not None:
                query = query.where(Job.created_at < until)
            if calling_ae_title is not None:
                query = query.where(Job.calling_ae_title == calling_ae_title)
            if study_instance_uid is not None:
                query = query.where(Series.study_instance_uid == study_instance_uid)
            if accession_number is not None:
                query = query.where(Series.accession_number == accession_number)
            jobs = session.scalars(query.limit(limit).offset(offset))
            return [_view(job, details=False) for job in jobs]
