"""SQLAlchemy 2.0 models of the job database: series, instances, jobs, events, outputs."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now in UTC (stored as UTC in every backend)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware UTC (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobStatus(enum.StrEnum):
    """Life cycle of a job; every change is also an event row."""

    RECEIVING = "RECEIVING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SENDING = "SENDING"
    DONE = "DONE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    # The output failed the QA gate under the ``hold`` policy: nothing is sent until an
    # admin releases (send it) or rejects (FAILED) the job.
    HELD = "HELD"

    @property
    def finished(self) -> bool:
        """True for the states a job never leaves by itself."""
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.SKIPPED)


# UIDs are at most 64 characters (PS3.5 9.1); AE titles at most 16 (PS3.5 6.2).
UID = String(64)
AE = String(16)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class Series(Base):
    """A series the node has received instances of."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))
    # Study attributes of the first instance, for QIDO-RS searches (LO 64, PN 5 x 64 + 4,
    # DA 8, SH 16: PS3.5 6.2).
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    study_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    jobs: Mapped[list[Job]] = relationship(back_populates="series")


class Instance(Base):
    """One received SOP instance, durably stored before its C-STORE success was sent."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One enhancement of one received series, from the first instance to DONE/FAILED."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_last_instance", "status", "last_instance_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", native_enum=False, length=16), index=True
    )
    # Chosen by the routing rule when the job was created; preset None = not enhanced.
    rule: Mapped[str | None] = mapped_column(String(64))
    preset: Mapped[str | None] = mapped_column(String(64))
    strength: Mapped[str | None] = mapped_column(String(8))
    # JSON list of destination objects ({"kind": "dicom" | "dicomweb", ...}).
    destinations: Mapped[str] = mapped_column(Text, default="[]")
    # Send the series untouched to the destinations when it is SKIPPED.
    forward_skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    called_ae_title: Mapped[str | None] = mapped_column(AE)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    output_series_instance_uid: Mapped[str | None] = mapped_column(UID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when the sender declared the series complete (end of a STOW-RS request): the job
    # closes without waiting for the quiet period, unless instances arrive after it.
    complete_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The worker running the job (RUNNING, SENDING) and until when its claim holds; the
    # worker renews it while it runs, and the node's reconciler takes back an expired one.
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A QUEUED job waiting to retry its sends is not published before this time (back-off
    # kept in the database, so it survives restarts of the node, workers and broker).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The QA gate's figures and verdict of the last enhancement (JSON, pacs_node/qa.py),
    # and what its rule does with a failed output (send_original | hold | fail; None: the
    # worker's qa.failure_policy).
    qa: Mapped[str | None] = mapped_column(Text)
    qa_verdict: Mapped[str | None] = mapped_column(String(8), index=True)  # pass | fail
    qa_policy: Mapped[str | None] = mapped_column(String(16))

    series: Mapped[Series] = relationship(back_populates="jobs")
    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )
    outputs: Mapped[list[JobOutput]] = relationship(
        back_populates="job", order_by="JobOutput.id", cascade="all, delete-orphan"
    )


class JobEvent(Base):
    """One timestamped line of a job's audit trail."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", native_enum=False, length=16)
    )
    message: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(64), default="node")

    job: Mapped[Job] = relationship(back_populates="events")


class JobOutput(Base):
    """One derived instance of a job and the result of sending it."""

    __tablename__ = "job_outputs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    source_sop_instance_uid: Mapped[str] = mapped_column(UID)
    # The instance's series when it is not the job's derived series (a secondary series:
    # the uncertainty map); None: ``Job.output_series_instance_uid``.
    series_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    path: Mapped[str] = mapped_column(String(512))
    send_status: Mapped[int | None] = mapped_column(Integer)
    send_message: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="outputs")


class ApiToken(Base):
    """A bearer token of the admin API: only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | viewer
    # Viewers see patient identifiers only with this flag; admins always do.
    show_patient: Mapped[bool] = mapped_column(Boolean, default=False)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WorkerHeartbeat(Base):
    """The last sign of life of each worker process (``/api/ready`` needs a live one)."""

    __tablename__ = "worker_heartbeats"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class JobTombstone(Base):
    """What is left of a deleted job (by an admin or by retention): who deleted it, when,
    and its whole audit trail, so the record of what was done to a study outlives its
    data."""

    __tablename__ = "job_tombstones"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    status: Mapped[str] = mapped_column(String(16))
    preset: Mapped[str | None] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    output_series_instance_uid: Mapped[str | None] = mapped_column(UID)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_by: Mapped[str] = mapped_column(String(64))
    # JSON list of the job's events: {"at", "status", "message", "actor"}.
    events: Mapped[str] = mapped_column(Text)
