"""Job leases and the reconciler's repository steps, on real SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from pacs_node.admin import JobAdmin
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository, LeaseLost, Route
from tests.pacs_node.db.test_repository import _instance

EXPIRED = timedelta(seconds=-1)  # a lease that has already run out


def _queued(repository: JobRepository, sop: str = "1.1") -> int:
    job_id = repository.record_instance(_instance(sop, series=sop + ".9"), route=Route("p")).job_id
    assert job_id is not None
    assert repository.close_receiving(job_id, timedelta(0), None) is JobStatus.QUEUED
    repository.mark_dispatched(job_id)
    return job_id


def test_a_job_whose_worker_stopped_renewing_is_queued_again_then_failed(
    repository: JobRepository,
) -> None:
    job_id = _queued(repository)
    assert repository.claim(job_id, "w1", lease=EXPIRED)
    assert repository.reclaim_expired(max_attempts=2) == [(job_id, JobStatus.QUEUED)]
    assert repository.undispatched_jobs() == [job_id]  # the monitor publishes it again
    assert repository.claim(job_id, "w2", lease=EXPIRED)  # the second worker dies too
    assert repository.reclaim_expired(max_attempts=2) == [(job_id, JobStatus.FAILED)]
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED and job.attempts == 2
    assert job.error_code == "worker_lost"
    assert "worker w2 stopped renewing its lease" in (job.error_message or "")
    reasons = [e.message for e in job.events if e.actor == "reconciler"]
    assert len(reasons) == 2 and "queued again (attempt 1 of 2 used)" in reasons[0]
    assert repository.reclaim_expired(max_attempts=2) == []  # nothing left to take back


def test_a_renewed_or_unexpired_lease_keeps_its_job(repository: JobRepository) -> None:
    job_id = _queued(repository)
    assert repository.claim(job_id, "w1", lease=timedelta(minutes=5))
    assert repository.reclaim_expired(max_attempts=3) == []
    other = _queued(repository, "2.1")
    assert repository.claim(other, "w1", lease=EXPIRED)
    assert repository.renew_leases("w1", timedelta(minutes=5)) == 2  # both jobs of w1
    assert repository.renew_leases("w2", timedelta(minutes=5)) == 0
    # A job past its hard time limit is left to expire.
    assert repository.renew_leases("w1", timedelta(minutes=5), except_jobs=[other]) == 1
    assert repository.reclaim_expired(max_attempts=3) == []
    repository.transition(other, JobStatus.DONE, "stored")
    assert repository.renew_leases("w1", timedelta(minutes=5)) == 1  # finished jobs: no lease


def test_a_queued_job_nobody_took_is_published_again(repository: JobRepository) -> None:
    job_id = _queued(repository)
    assert repository.redispatch_stale(timedelta(minutes=10)) == []  # queued just now
    time.sleep(0.05)
    assert repository.redispatch_stale(timedelta(milliseconds=10)) == [job_id]
    assert repository.undispatched_jobs() == [job_id]
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.QUEUED
    assert "published again" in job.events[-1].message
    running = _queued(repository, "3.1")
    assert repository.claim(running, "w1", lease=timedelta(minutes=5))
    time.sleep(0.05)
    assert running not in repository.redispatch_stale(timedelta(milliseconds=10))


def test_a_scheduled_retry_is_published_only_when_due(repository: JobRepository) -> None:
    job_id = _queued(repository)
    assert repository.claim(job_id, "w1", lease=timedelta(minutes=5))
    repository.schedule_retry(job_id, timedelta(minutes=10), "PACS down; retry 2 in 600 s")
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.QUEUED
    assert repository.undispatched_jobs() == []  # not before its time
    assert repository.redispatch_stale(timedelta(0)) == []  # not mistaken for a lost message
    assert repository.claim(job_id, "w1", lease=timedelta(minutes=5))  # its next attempt
    repository.schedule_retry(job_id, timedelta(seconds=-1), "due now")
    assert repository.undispatched_jobs() == [job_id]


def test_a_worker_whose_job_was_taken_back_cannot_send_or_finish_it(
    repository: JobRepository,
) -> None:
    job_id = _queued(repository)
    assert repository.claim(job_id, "w1", lease=EXPIRED)
    assert repository.reclaim_expired(max_attempts=3) == [(job_id, JobStatus.QUEUED)]
    assert repository.claim(job_id, "w2", lease=timedelta(minutes=5))
    for act in (
        lambda: repository.transition(job_id, JobStatus.SENDING, "sending", owner="w1"),
        lambda: repository.transition(job_id, JobStatus.DONE, "stored", owner="w1"),
        lambda: repository.schedule_retry(job_id, timedelta(seconds=1), "retry", owner="w1"),
    ):
        with pytest.raises(LeaseLost, match="no longer held by w1"):
            act()
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.RUNNING  # untouched
    repository.transition(job_id, JobStatus.SENDING, "sending", owner="w2")
    repository.transition(job_id, JobStatus.DONE, "stored", owner="w2")
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.DONE


def test_an_admin_retry_takes_the_job_from_its_worker_and_makes_it_due(
    repository: JobRepository,
) -> None:
    job_id = _queued(repository)
    assert repository.claim(job_id, "w1", lease=timedelta(minutes=5))
    JobAdmin(repository.session_factory).retry(job_id, "cli:admin", force=True)
    assert repository.undispatched_jobs() == [job_id]
    with pytest.raises(LeaseLost):  # the old worker, if alive, cannot finish it any more
        repository.transition(job_id, JobStatus.DONE, "stored", owner="w1")
    assert repository.claim(job_id, "w2", lease=timedelta(minutes=5))
    repository.transition(job_id, JobStatus.DONE, "stored", owner="w2")
