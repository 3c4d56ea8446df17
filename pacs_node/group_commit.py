"""Group commit: callers that arrive while a commit is in progress are committed together.

Each C-STORE association waits for its instance to be durable before it answers, so one
association can never batch its own instances. Several associations can: while one
caller's fsyncs and transaction are in flight, the instances other associations bring
wait, and the next commit takes all of them at once (one transaction, and one flush of
the filesystem for a large enough batch). This is the leader/follower scheme of database
logs: no thread of its own, and a caller alone commits at once, as if the scheme were not
there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _Waiting(Generic[T, R]):
    """One caller's item, its result once committed, and the event that wakes it (when
    its result is set, or when it is to lead the next commit)."""

    __slots__ = ("done", "item", "result", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.done = False
        self.wake = threading.Event()


class GroupCommit(Generic[T, R]):
    """Commit items in batches of whatever arrived together, each caller getting its result.

    ``commit`` takes the batch's items in arrival order and returns one result per item;
    every item of a batch whose commit raises, or returns a list of the wrong length,
    gets ``failed``. At most one commit runs at a time. The caller that finds no commit
    running leads: it commits its own item with everything already waiting. Items arriving
    meanwhile wait; when the commit ends, the oldest of them leads the next one.
    """

    def __init__(self, commit: Callable[[Sequence[T]], Sequence[R]], failed: R) -> None:
        self._commit = commit
        self._failed = failed
        self._lock = threading.Lock()
        self._waiting: list[_Waiting[T, R]] = []
        self._leading = False
        self.batches = 0  # commits run, and the largest batch: how much grouping happened
        self.largest = 0

    def waiting(self) -> int:
        """How many items wait for the next commit."""
        with self._lock:
            return len(self._waiting)

    def submit(self, item: T) -> R:
        """Commit ``item`` (alone or with others) and return its result; blocks until then."""
        mine: _Waiting[T, R] = _Waiting(item)
        with self._lock:
            self._waiting.append(mine)
            lead = not self._leading
            self._leading = True
        if not lead:
            try:
                mine.wake.wait()
            except BaseException:  # interrupted while waiting: leave, and pass on a lead
                self._abandon(mine)
                raise
            if mine.done:
                return mine.result  # type: ignore[return-value]
            # Woken to lead: the commit before has ended, and this item is the oldest.
        return self._lead(mine)

    def _lead(self, mine: _Waiting[T, R]) -> R:
        """Commit everything waiting (``mine`` among it), set every result, wake the
        waiters and hand the lead on, whatever the commit does."""
        batch: list[_Waiting[T, R]] = []
        results: list[R] | None = None
        try:
            with self._lock:
                batch, self._waiting = self._waiting, []
            try:
                results = list(self._commit([w.item for w in batch]))
            except Exception:  # every waiter gets the failure as its result
                logger.exception("a group commit of %d items failed", len(batch))
            if results is not None and len(results) != len(batch):
                logger.error("a group commit of %d items returned %d results: all failed",
                             len(batch), len(results))  # fmt: skip
                results = None
        finally:
            # Also on BaseException: nobody may wait for ever, and someone must lead.
            if results is None:
                results = [self._failed] * len(batch)
            for waiter, result in zip(batch, results, strict=True):
                waiter.result = result
                waiter.done = True
                if waiter is not mine:
                    waiter.wake.set()
            with self._lock:
                self.batches += 1
                self.largest = max(self.largest, len(batch))
                self._hand_on()
        return mine.result  # type: ignore[return-value]

    def _hand_on(self) -> None:
        """The oldest waiter leads the next commit, or nobody leads (lock held)."""
        if self._waiting:
            self._waiting[0].wake.set()
        else:
            self._leading = False

    def _abandon(self, mine: _Waiting[T, R]) -> None:
        """A waiter interrupted: its item leaves the queue unless a commit has taken it
        (that commit sets its result); if it had been woken to lead, the lead passes on."""
        with self._lock:
            if mine in self._waiting:
                self._waiting.remove(mine)
                if mine.wake.is_set():
                    self._hand_on()
