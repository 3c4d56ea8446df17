"""The job state machine, on real SQLite and PostgreSQL, and the rule that nothing else in
the node writes a job's status or its audit trail."""

from __future__ import annotations

import ast
import itertools
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from pacs_node.admin import JobAdmin
from pacs_node.db import lifecycle
from pacs_node.db.models import Job, JobEvent, JobStatus, Series, utcnow
from pacs_node.db.repository import JobRepository, Route
from tests.pacs_node.db.test_repository import _instance

ROOT = Path(__file__).resolve().parents[3]
_SERIAL = itertools.count(1)


def _job_in(repository: JobRepository, status: JobStatus) -> int:
    """A job put straight into ``status`` (the test's set-up, not a transition)."""
    now = utcnow()
    with repository.session_factory.begin() as session:
        series = Series(study_instance_uid="1.2", series_instance_uid=f"1.2.{next(_SERIAL)}",
                        created_at=now)  # fmt: skip
        session.add(series)
        session.flush()
        job = Job(series_id=series.id, status=status, destinations="[]", forward_skipped=False,
                  instance_count=1, attempts=0, created_at=now, updated_at=now)  # fmt: skip
        session.add(job)
        session.flush()
        return job.id


def _events(repository: JobRepository, job_id: int) -> list[tuple[JobStatus, str]]:
    with repository.session_factory() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))
        return [(e.status, e.message) for e in rows]


@pytest.mark.parametrize("origin", list(JobStatus))
def test_a_job_moves_only_along_the_state_machine(
    repository: JobRepository, origin: JobStatus
) -> None:
    for target in JobStatus:
        job_id = _job_in(repository, origin)
        if not lifecycle.sources_of(target):  # RECEIVING: only where a job starts
            with (
                repository.session_factory.begin() as session,
                pytest.raises(lifecycle.IllegalTransition),
            ):
                lifecycle.move(session, job_id, target, "why")
            continue
        allowed = target in lifecycle.TRANSITIONS[origin]
        with repository.session_factory.begin() as session:
            moved = lifecycle.move(session, job_id, target, "why", error_code="test")
        assert moved is allowed, (origin, target)
        job = repository.get_job(job_id)
        assert job is not None
        assert job.status is (target if allowed else origin)
        # A change and its event row go together; a refused change writes neither.
        assert _events(repository, job_id) == ([(target, "why")] if allowed else [])
        if allowed and target is JobStatus.FAILED:
            assert (job.error_code, job.error_message) == ("test", "why")
        assert (job.finished_at is not None) is (allowed and target.finished)


def test_a_caller_naming_a_forbidden_origin_is_a_programming_error(
    repository: JobRepository,
) -> None:
    job_id = _job_in(repository, JobStatus.DONE)
    with repository.session_factory.begin() as session, pytest.raises(lifecycle.IllegalTransition):
        lifecycle.move(session, job_id, JobStatus.QUEUED, "x", expect=[JobStatus.DONE])
    with pytest.raises(lifecycle.IllegalTransition, match="cannot move to QUEUED"):
        repository.transition(job_id, JobStatus.QUEUED, "x")
    assert _events(repository, job_id) == []


def test_leaving_a_failure_clears_its_reason(repository: JobRepository) -> None:
    job_id = repository.record_instance(_instance("1.1"), route=Route("p")).job_id
    assert job_id is not None
    repository.transition(job_id, JobStatus.FAILED, "broken", error_code="bad")
    JobAdmin(repository.session_factory).retry(job_id, "alice")
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.QUEUED
    assert (job.error_code, job.error_message, job.finished_at) == (None, None, None)
    assert (job.events[-1].message, job.events[-1].actor) == ("retry requested by alice", "alice")


def test_a_skipped_series_whose_forward_keeps_failing_is_a_dead_letter_an_admin_can_retry(
    repository: JobRepository,
) -> None:
    job_id = repository.record_instance(_instance("1.1"), route=Route(None)).job_id
    assert job_id is not None
    repository.close_receiving(job_id, timedelta(0), "not CT")
    delay = timedelta(minutes=5)
    assert repository.forward_failed(job_id, "PACS down", delay, 2) is JobStatus.SKIPPED
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.SKIPPED and job.attempts == 1
    assert job.events[-1].message == "PACS down; forwarding retry 2 in 300 s"
    assert repository.forward_failed(job_id, "PACS down", delay, 2) is JobStatus.FAILED
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert job.error_code == "forward_failed"
    assert job.error_message == "not forwarded: PACS down (after 2 attempts)"
    assert repository.forward_failed(job_id, "again", delay, 2) is None  # not SKIPPED any more

    JobAdmin(repository.session_factory).retry(job_id, "alice")
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.SKIPPED and job.attempts == 0
    assert (job.error_code, job.error_message) == ("skipped", "not CT")
    assert job.events[-1].message == "retry requested by alice; forwarding again"


# -- the rule: one home for the lifecycle ------------------------------------------------


def _status_writes(path: Path) -> list[str]:
    """Where a module builds an event row or writes a job's status."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
                node.func, "id", ""
            )  # fmt: skip
            keywords = {k.arg for k in node.keywords}
            if name == "JobEvent":
                found.append(f"{where}: JobEvent(...)")
            if name == "values" and "status" in keywords:
                found.append(f"{where}: .values(status=...)")
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:  # ``x.status = ...``, also inside ``a, x.status = ...``
                leaves = target.elts if isinstance(target, ast.Tuple) else [target]
                for leaf in leaves:
                    if isinstance(leaf, ast.Attribute) and leaf.attr == "status":
                        found.append(f"{where}: .status = ...")
    return found


def test_only_the_lifecycle_module_writes_statuses_and_events() -> None:
    sources = [p for d in ("pacs_node", "workers") for p in sorted((ROOT / d).rglob("*.py"))]
    home = ROOT / "pacs_node" / "db" / "lifecycle.py"
    assert home in sources
    offenders = [w for p in sources if p != home and "migrations" not in p.parts
                 for w in _status_writes(p)]  # fmt: skip
    assert offenders == []
    assert _status_writes(home)  # the checker does see writes where they are
