"""What the node holds, for QIDO-RS and WADO-RS: received instances and derived outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from pacs_node.db.models import Instance, Job, JobOutput, JobStatus, Series

# Error codes of jobs whose derived outputs the QA gate kept from the destinations.
QA_STOPPED = ("qa_failed", "qa_rejected")


@dataclass(frozen=True)
class StoredInstance:
    """One file the node can serve."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None  # None for derived outputs (read from the file)
    path: str
    derived: bool


@dataclass(frozen=True)
class StudyFilter:
    """QIDO-RS study matching (PS3.18 8.3.4): exact, ``*``/``?`` wildcards, date ranges."""

    study_instance_uid: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    series_instance_uid: str | None = None


@dataclass(frozen=True)
class SeriesRow:
    """A received series and the study attributes recorded from its first instance."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    series_description: str | None
    patient_id: str | None
    patient_name: str | None
    study_date: str | None
    accession_number: str | None
    study_description: str | None


def _like(value: str) -> str:
    """DICOM wildcards (``*`` any run, ``?`` one character) as a SQL LIKE pattern."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _match_text(query: Select[Any], column: object, value: str | None) -> Select[Any]:
    if not value:
        return query
    if "*" in value or "?" in value:
        return query.where(column.like(_like(value), escape="\\"))  # type: ignore[attr-defined]
    return query.where(column == value)  # type: ignore[arg-type]


def _match_date(query: Select[Any], value: str | None) -> Select[Any]:
    """``YYYYMMDD``, ``A-B``, ``A-`` or ``-B`` (DA range matching, PS3.4 C.2.2.2.5)."""
    if not value:
        return query
    if "-" not in value:
        return query.where(Series.study_date == value)
    low, high = value.split("-", 1)
    if low:
        query = query.where(Series.study_date >= low)
    if high:
        query = query.where(Series.study_date <= high)
    return query


class ArchiveIndex:
    """Read-only queries over received series and derived outputs."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def series(self, match: StudyFilter) -> list[SeriesRow]:
        """Received series matching ``match``, oldest first."""
        query = select(Series)
        query = _match_text(query, Series.study_instance_uid, match.study_instance_uid)
        query = _match_text(query, Series.series_instance_uid, match.series_instance_uid)
        query = _match_text(query, Series.patient_id, match.patient_id)
        query = _match_text(query, Series.patient_name, match.patient_name)
        query = _match_text(query, Series.accession_number, match.accession_number)
        query = _match_text(query, Series.modality, match.modality)
        query = _match_date(query, match.study_date)
        with self._sessions() as session:
            return [
                SeriesRow(
                    s.study_instance_uid,
                    s.series_instance_uid,
                    s.modality,
                    s.series_number,
                    s.series_description,
                    s.patient_id,
                    s.patient_name,
                    s.study_date,
                    s.accession_number,
                    s.study_description,
                )
                for s in session.scalars(query.order_by(Series.id))
            ]

    def instances(
        self,
        study: str | None = None,
        series: str | None = None,
        sop: str | None = None,
    ) -> list[StoredInstance]:
        """Received instances and derived outputs (sent or not, but none the QA gate
        stopped), in arrival order."""
        received = select(Instance, Series).join(Series, Instance.series_id == Series.id)
        derived = (
            select(JobOutput, Job, Series)
            .join(Job, JobOutput.job_id == Job.id)
            .join(Series, Job.series_id == Series.id)
            .where(Job.output_series_instance_uid.is_not(None))
            # Outputs the QA gate stopped (held, failed, rejected, the original sent
            # instead) are not served; the dashboard's viewer still shows them to admins.
            .where(Job.status != JobStatus.HELD)
            .where(or_(Job.error_code.is_(None), Job.error_code.not_in(QA_STOPPED)))
        )
        if study:
            received = received.where(Series.study_instance_uid == study)
            derived = derived.where(Series.study_instance_uid == study)
        if series:
            received = received.where(Series.series_instance_uid == series)
            derived = derived.where(
                func.coalesce(JobOutput.series_instance_uid, Job.output_series_instance_uid)
                == series
            )
        if sop:
            received = received.where(Instance.sop_instance_uid == sop)
            derived = derived.where(JobOutput.sop_instance_uid == sop)
        with self._sessions() as session:
            rows = [
                StoredInstance(
                    s.study_instance_uid,
                    s.series_instance_uid,
                    i.sop_instance_uid,
                    i.sop_class_uid,
                    i.path,
                    derived=False,
                )
                for i, s in session.execute(received.order_by(Instance.id))
            ]
            for output, job, source in session.execute(derived.order_by(JobOutput.id)):
                assert job.output_series_instance_uid is not None
                rows.append(
                    StoredInstance(
                        source.study_instance_uid,
                        output.series_instance_uid or job.output_series_instance_uid,
                        output.sop_instance_uid,
                        None,
                        output.path,
                        derived=True,
                    )
                )
            return rows
