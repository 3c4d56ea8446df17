"""Job time limits: the soft limit ends the task with a reason, the hard one lets the lease go."""

from __future__ import annotations

import time

import pytest

from pacs_node.settings import WorkerSettings
from workers import limits
from workers.limits import Deadlines, TimeLimitExceeded, soft_limit_s


def test_the_limit_grows_with_the_series() -> None:
    settings = WorkerSettings(time_limit_base_s=100, time_limit_per_slice_s=2)
    assert soft_limit_s(settings, 0) == 100 and soft_limit_s(settings, 50) == 200


def test_a_body_past_its_soft_limit_is_interrupted_with_the_reason() -> None:
    deadlines = Deadlines()
    started = time.monotonic()
    with (
        pytest.raises(TimeLimitExceeded, match="job 7 exceeded its time limit of 0 s"),
        deadlines.limit(7, 0.2),
    ):
        time.sleep(5)
    assert time.monotonic() - started < 2
    assert deadlines.overdue() == []  # the job is no longer tracked
    with deadlines.limit(8, 5.0):  # a body within its limit is left alone
        time.sleep(0.05)


def test_a_job_past_its_hard_limit_is_reported_overdue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "HARD_GRACE_S", -0.4)  # hard limit at 0.1 s, before the soft
    deadlines = Deadlines()
    seen: list[int] = []
    with pytest.raises(TimeLimitExceeded), deadlines.limit(9, 0.5):
        assert deadlines.overdue() == []
        time.sleep(0.2)
        seen = deadlines.overdue()  # what the heartbeat thread would see now
        time.sleep(5)
    assert seen == [9]
