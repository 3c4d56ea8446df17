"""Retention on a real job database: age limits and the disk watermark; unfinished jobs'
data is never touched."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from pacs_node.db.models import Job, JobStatus, utcnow
from pacs_node.db.repository import JobRepository, Route
from pacs_node.retention import Retention
from pacs_node.settings import RetentionSettings
from tests.pacs_node.db.test_repository import _instance


def _job(repository: JobRepository, tmp_path: Path, name: str, status: JobStatus,
         age_days: float) -> tuple[int, Path, Path]:  # fmt: skip
    """A job of one received file and one derived file, finished ``age_days`` ago."""
    received, derived = tmp_path / f"{name}.in.dcm", tmp_path / f"{name}.out.dcm"
    received.write_bytes(b"in")
    derived.write_bytes(b"out")
    instance = replace(_instance(f"1.{name}", series=f"2.{name}"), path=str(received))
    job_id = repository.record_instance(instance, route=Route("ct-denoise")).job_id
    assert job_id is not None
    repository.replace_outputs(job_id, f"3.{name}", [(f"4.{name}", f"1.{name}", str(derived))])
    finished = utcnow() - timedelta(days=age_days) if status.finished else None
    with repository.session_factory.begin() as session:
        values = {"status": status, "finished_at": finished}
        session.execute(update(Job).where(Job.id == job_id).values(**values))
    return job_id, received, derived


def test_age_limits_remove_old_finished_data_only(
    repository: JobRepository, tmp_path: Path
) -> None:
    old, old_in, old_out = _job(repository, tmp_path, "1", JobStatus.DONE, 10)
    new, new_in, new_out = _job(repository, tmp_path, "2", JobStatus.DONE, 0.1)
    running, run_in, run_out = _job(repository, tmp_path, "3", JobStatus.RUNNING, 10)
    settings = RetentionSettings(derived_days=5, received_days=7)
    report = Retention(repository.session_factory, tmp_path, settings, lambda _: 10.0).run_once()
    assert (report.derived_files, report.received_files, report.jobs) == (1, 1, 0)
    assert not old_out.exists() and not old_in.exists()
    assert new_out.exists() and new_in.exists() and run_in.exists() and run_out.exists()
    job = repository.get_job(old)
    assert job is not None and job.outputs == []
    assert [e.actor for e in job.events][-2:] == ["retention", "retention"]
    assert not repository.find_instance("1.1") and repository.find_instance("1.3")
    # Job rows after their own limit, with whatever data is left.
    report = Retention(repository.session_factory, tmp_path, RetentionSettings(jobs_days=1),
                       lambda _: 10.0).run_once()  # fmt: skip
    assert report.jobs == 1 and repository.get_job(old) is None
    assert repository.get_job(new) is not None and repository.get_job(running) is not None


def test_watermark_removes_oldest_finished_jobs_until_the_target(
    repository: JobRepository, tmp_path: Path
) -> None:
    oldest, *_ = _job(repository, tmp_path, "1", JobStatus.FAILED, 30)
    middle, *_ = _job(repository, tmp_path, "2", JobStatus.DONE, 20)
    newest, *_ = _job(repository, tmp_path, "3", JobStatus.SKIPPED, 10)
    waiting, wait_in, _ = _job(repository, tmp_path, "4", JobStatus.QUEUED, 40)
    usage = iter([95.0, 85.0, 79.0])
    retention = Retention(repository.session_factory, tmp_path, RetentionSettings(),
                          lambda _: next(usage))  # fmt: skip
    report = retention.run_once()
    assert report.emergency_jobs == 2
    assert repository.get_job(oldest) is None and repository.get_job(middle) is None
    assert repository.get_job(newest) is not None
    assert repository.get_job(waiting) is not None and wait_in.exists()
    # The deleted jobs leave their audit trail behind.
    tombstone = repository.tombstone(oldest)
    assert tombstone is not None and tombstone["deleted_by"] == "retention"
    assert tombstone["status"] == "FAILED" and tombstone["series_instance_uid"] == "2.1"
    assert [e["status"] for e in tombstone["events"]] == ["RECEIVING"]
    assert repository.tombstone(newest) is None
    # Nothing finished left to remove: it says so and keeps the unfinished job's data.
    full = Retention(repository.session_factory, tmp_path, RetentionSettings(), lambda _: 99.0)
    report = full.run_once()
    assert report.emergency_jobs == 1 and "only unfinished jobs' data is left" in report.notes[0]
    assert repository.get_job(waiting) is not None and wait_in.exists()


def test_target_must_be_below_the_watermark() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="below disk_watermark_percent"):
        RetentionSettings(disk_watermark_percent=80, disk_target_percent=85)
