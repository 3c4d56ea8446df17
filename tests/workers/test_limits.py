"""Job time limits: the soft limit ends the task with a reason, the hard one lets the lease go."""

from __future__ import annotations

import subprocess
import sys
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


STUCK = """
import threading, time
from workers import limits
limits.HARD_GRACE_S = 0.3
deadlines = limits.Deadlines()

def heartbeat():
    while True:
        limits.enforce_hard_limit(deadlines)
        time.sleep(0.05)

threading.Thread(target=heartbeat, daemon=True).start()
with deadlines.limit(11, 0.2):
    while True:  # a task that swallows its soft limit and never returns
        try:
            time.sleep(10)
        except limits.TimeLimitExceeded:
            pass
"""


def test_a_task_stuck_past_its_hard_limit_ends_its_worker_process() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", STUCK], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == limits.EXIT_HARD_LIMIT, done.stderr
    assert time.monotonic() - started < 30
    assert "[11] are past their hard time limit" in done.stderr


def test_nothing_is_ended_while_every_job_is_within_its_limits() -> None:
    stopped: list[int] = []
    deadlines = Deadlines()
    with deadlines.limit(12, 60.0):
        assert limits.enforce_hard_limit(deadlines, stopped.append) == []
    assert stopped == []
