"""The job repository on real SQLite and PostgreSQL databases."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

from pacs_node.admin import JobAdmin
from pacs_node.db.migrate import is_current, upgrade
from pacs_node.db.models import Base, JobStatus
from pacs_node.db.repository import JobRepository, ReceivedInstance, Route
from pacs_node.db.session import make_engine, make_session_factory

_PEER = {"kind": "dicom", "ae_title": "P", "host": "h", "port": 1}


def _instance(
    sop: str, series: str = "1.2.3.4", study: str = "1.2.3", number: int = 3
) -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        study_instance_uid=study,
        series_instance_uid=series,
        modality="CT",
        series_number=number,
        series_description="Abdomen",
        path=f"/data/{sop}.dcm",
        size_bytes=1000,
        calling_ae_title="SCANNER",
        called_ae_title="ENHANCE",
    )


def test_migrations_match_models(engine: Engine, db_url: str) -> None:
    assert is_current(engine, db_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_instances_of_a_series_share_one_receiving_job(repository: JobRepository) -> None:
    first = repository.record_instance(_instance("1.1"), route=Route("ct-denoise", [_PEER]))
    second = repository.record_instance(_instance("1.2"), route=Route("ct-denoise", [_PEER]))
    other = repository.record_instance(_instance("2.1", series="9.9"), route=Route("x"))
    assert not first.duplicate and not second.duplicate
    assert first.job_id == second.job_id != other.job_id
    assert first.job_id is not None
    job = repository.get_job(first.job_id)
    assert job is not None
    assert job.status is JobStatus.RECEIVING and job.instance_count == 2
    assert (job.preset, job.destinations, job.calling_ae_title) == (
        "ct-denoise",
        [_PEER],
        "SCANNER",
    )
    assert [e.status for e in job.events] == [JobStatus.RECEIVING]


def test_duplicate_sop_instance_is_not_recorded_twice(repository: JobRepository) -> None:
    first = repository.record_instance(_instance("1.1"), route=Route("p"))
    again = repository.record_instance(_instance("1.1"), route=Route("p"))
    assert again.duplicate and again.job_id == first.job_id
    assert repository.find_instance("1.1") and not repository.find_instance("1.9")
    assert first.job_id is not None
    job = repository.get_job(first.job_id)
    assert job is not None and job.instance_count == 1
    assert len(repository.job_inputs(first.job_id)) == 1


def test_lifecycle_and_audit_trail(repository: JobRepository) -> None:
    job_id = repository.record_instance(_instance("1.1"), route=Route("p")).job_id
    assert job_id is not None
    assert repository.due_receiving_jobs(timedelta(hours=1)) == []
    assert repository.due_receiving_jobs(timedelta(0)) == [job_id]
    assert repository.close_receiving(job_id, timedelta(0), None) is JobStatus.QUEUED
    assert repository.close_receiving(job_id, timedelta(0), None) is None  # closed once only
    assert repository.undispatched_jobs() == [job_id]
    repository.mark_dispatched(job_id)
    assert repository.undispatched_jobs() == []
    assert repository.claim(job_id) is True
    assert repository.claim(job_id) is False  # a duplicate task does nothing
    repository.replace_outputs(job_id, "2.25.1", [("2.25.2", "1.1", "/d/1.dcm")])
    repository.transition(job_id, JobStatus.SENDING, "sending")
    repository.record_send_results(job_id, [("2.25.2", 0, "Success")])
    repository.transition(job_id, JobStatus.DONE, "stored")
    job = repository.get_job(job_id)
    assert job is not None
    assert job.status is JobStatus.DONE and job.attempts == 1
    assert job.output_series_instance_uid == "2.25.1"
    assert [e.status for e in job.events] == [
        JobStatus.RECEIVING,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.SENDING,
        JobStatus.DONE,
    ]
    times = [e.at for e in job.events]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert job.started_at is not None and job.finished_at is not None
    assert [(o.sop_instance_uid, o.send_status) for o in job.outputs] == [("2.25.2", 0)]


def test_skipped_and_failed_keep_their_reason(repository: JobRepository) -> None:
    skipped = repository.record_instance(_instance("1.1"), route=Route("p")).job_id
    failed = repository.record_instance(_instance("2.1", series="5.5"), route=Route("p")).job_id
    assert skipped is not None and failed is not None
    assert repository.close_receiving(skipped, timedelta(0), "a localizer") is JobStatus.SKIPPED
    repository.close_receiving(failed, timedelta(0), None)
    repository.claim(failed)
    repository.transition(
        failed, JobStatus.FAILED, "slices differ in size", error_code="invalid_series"
    )
    skipped_job, failed_job = repository.get_job(skipped), repository.get_job(failed)
    assert skipped_job is not None and failed_job is not None
    assert skipped_job.status is JobStatus.SKIPPED and "a localizer" in (
        skipped_job.error_message or ""
    )
    assert (failed_job.error_code, failed_job.error_message) == (
        "invalid_series",
        "slices differ in size",
    )
    assert {j.id for j in repository.list_jobs(status=JobStatus.FAILED)} == {failed}


def test_new_instances_after_a_finished_job_open_a_new_job(repository: JobRepository) -> None:
    first = repository.record_instance(_instance("1.1"), route=Route("p")).job_id
    assert first is not None
    repository.close_receiving(first, timedelta(0), "skipped for the test")
    again = repository.record_instance(_instance("1.2"), route=Route("p")).job_id
    assert again is not None and again != first
    assert len(repository.job_inputs(again)) == 2  # the whole series is the new job's input


def test_routing_runs_once_per_job_and_a_stale_open_job_is_never_reused(
    repository: JobRepository,
) -> None:
    calls: list[str] = []

    def route() -> Route:
        calls.append("routed")
        return Route("p")

    first = repository.record_instance(_instance("1.1"), route=route).job_id
    for n in range(2, 5):  # the series' next instances: no routing, the same job
        assert repository.record_instance(_instance(f"1.{n}"), route=route).job_id == first
    assert calls == ["routed"]
    # Another process (its own repository) closes the job and opens the next one; this
    # process's memory of the open job is stale and must not be used.
    other = JobRepository(repository.session_factory)
    assert first is not None
    other.close_receiving(first, timedelta(0), "skipped for the test")
    second = other.record_instance(_instance("1.5"), route=route).job_id
    third = repository.record_instance(_instance("1.6"), route=route).job_id
    assert second == third != first and calls == ["routed", "routed"]
    closed, opened = repository.get_job(first), repository.get_job(third or 0)
    assert closed is not None and closed.instance_count == 4
    assert opened is not None and opened.instance_count == 2
    duplicate = repository.record_instance(_instance("1.6"), route=route)
    assert duplicate.duplicate and duplicate.job_id == third
    again = repository.get_job(third or 0)
    assert again is not None and again.instance_count == 2


def test_concurrent_associations_create_one_series_and_job(repository: JobRepository) -> None:
    errors: list[BaseException] = []

    def store(index: int) -> None:
        try:
            for n in range(10):
                repository.record_instance(_instance(f"1.{index}.{n}"), route=Route("p"))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    jobs = repository.list_jobs()
    assert len(jobs) == 1 and jobs[0].instance_count == 40


def test_used_series_numbers(repository: JobRepository) -> None:
    repository.record_instance(_instance("1.1", series="5", number=3), route=Route("p"))
    repository.record_instance(_instance("1.2", series="6", number=1003), route=Route("p"))
    repository.record_instance(
        _instance("1.3", series="7", study="other", number=4), route=Route("p")
    )
    assert repository.used_series_numbers("1.2.3") == {3, 1003}


def test_a_deleted_series_whose_ids_are_reused_never_takes_a_late_instance(
    repository: JobRepository,
) -> None:
    """SQLite reuses the ids of deleted rows: a late instance of a deleted series must not
    join the job that a new series got with the same ids."""
    old = repository.record_instance(_instance("1.1", series="7.7"), route=Route("p")).job_id
    assert old is not None
    repository.close_receiving(old, timedelta(0), "skipped for the test")
    JobAdmin(repository.session_factory).delete(old, "admin")
    new = repository.record_instance(_instance("2.1", series="8.8"), route=Route("p")).job_id
    late = repository.record_instance(_instance("1.2", series="7.7"), route=Route("p")).job_id
    assert late is not None and late != new
    other = repository.get_job(late)
    assert other is not None and other.series_instance_uid == "7.7"
    mine = repository.get_job(new or 0)
    assert mine is not None and mine.instance_count == 1


def test_a_settled_lookup_waits_for_a_commit_in_flight(tmp_path: Path) -> None:
    """SQLite: the plain lookup answers from the last commit at once; ``settled`` waits for
    a writer first (the receiver asks so before it removes a file a row may name)."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    upgrade(url)
    repository = JobRepository(make_session_factory(make_engine(url)))
    repository.record_instance(_instance("1.1"), route=Route("p"))
    writer_engine = make_engine(url)
    answers: list[bool] = []
    with writer_engine.begin() as writer:  # BEGIN IMMEDIATE: a commit in flight
        writer.exec_driver_sql("SELECT 1")
        assert repository.find_instance("1.1") is True  # at once
        waiting = threading.Thread(
            target=lambda: answers.append(repository.find_instance("1.1", settled=True))
        )
        waiting.start()
        time.sleep(0.5)
        assert answers == []  # waits for the writer
    waiting.join(timeout=10)
    assert answers == [True]
    writer_engine.dispose()
