"""Group commit: a caller alone commits at once; callers arriving during a commit are
committed together in the next one, each getting its own result; a failed commit fails
only its batch. Then the receiver: C-STOREs of parallel associations stored together,
each row with its own sender."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select

from pacs_node.db.models import Instance
from pacs_node.db.repository import JobRepository
from pacs_node.errors import StorageError
from pacs_node.group_commit import GroupCommit
from pacs_node.ingest import OUT_OF_RESOURCES, IngestResult, Origin, Receiver
from pacs_node.routing import Routing
from pacs_node.storage import InstanceStore
from tests.helpers.synthetic import file_path, make_ct_series


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class _Interrupted(BaseException):
    """Not an Exception: what a KeyboardInterrupt or SystemExit would be to a commit."""


class _GatedCommit:
    """Upper-cases its batch; the first commit waits until the gate opens. A batch
    holding ``fail_on`` raises ``error``; one holding ``short_on`` loses a result."""

    def __init__(
        self, fail_on: str = "", error: BaseException | None = None, short_on: str = ""
    ) -> None:
        self.gate = threading.Event()
        self.batches: list[list[str]] = []
        self.fail_on, self.error, self.short_on = fail_on, error, short_on

    def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        if len(self.batches) == 1:
            assert self.gate.wait(10)
        if self.fail_on in items:
            raise self.error or OSError("disk on fire")
        if self.short_on in items:
            return [item.upper() for item in items][1:]
        return [item.upper() for item in items]


def _start(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)  # a hang fails, not blocks, pytest
    thread.start()
    return thread


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(20)
        assert not thread.is_alive(), "a caller still waits"


def _submit_all(group: GroupCommit[str, str], items: list[str], commit: _GatedCommit) -> dict:
    """Submit ``items[0]`` (which leads and blocks), then the rest while it blocks; each
    item's result, or the name of the exception its caller got."""
    results: dict[str, str] = {}

    def run(item: str) -> None:
        try:
            results[item] = group.submit(item)
        except _Interrupted:
            results[item] = "interrupted"

    leader = _start(lambda: run(items[0]))
    _wait_for(lambda: len(commit.batches) == 1)
    others = [_start(lambda item=item: run(item)) for item in items[1:]]  # type: ignore[misc]
    _wait_for(lambda: group.waiting() == len(others))
    commit.gate.set()
    _join([leader, *others])
    return results


def test_a_caller_alone_commits_at_once_in_its_own_thread() -> None:
    threads = []

    def commit(items: Sequence[str]) -> list[str]:
        threads.append(threading.current_thread())
        return [item.upper() for item in items]

    group: GroupCommit[str, str] = GroupCommit(commit, "failed")
    assert group.submit("a") == "A" and group.submit("b") == "B"
    assert threads == [threading.current_thread()] * 2
    assert (group.batches, group.largest) == (2, 1)


def test_callers_arriving_during_a_commit_are_committed_together() -> None:
    commit = _GatedCommit()
    group: GroupCommit[str, str] = GroupCommit(commit, "failed")
    results = _submit_all(group, ["a", "b", "c", "d"], commit)
    assert results == {"a": "A", "b": "B", "c": "C", "d": "D"}
    assert commit.batches[0] == ["a"] and sorted(commit.batches[1]) == ["b", "c", "d"]
    assert (group.batches, group.largest) == (2, 3)
    assert group.submit("e") == "E"  # nobody leads any more: the next caller does


def test_a_failed_commit_fails_its_batch_only() -> None:
    commit = _GatedCommit(fail_on="c")
    group: GroupCommit[str, str] = GroupCommit(commit, "failed")
    results = _submit_all(group, ["a", "b", "c"], commit)
    assert results == {"a": "A", "b": "failed", "c": "failed"}
    assert group.submit("d") == "D"


def test_a_commit_that_loses_a_result_fails_its_batch() -> None:
    commit = _GatedCommit(short_on="c")
    group: GroupCommit[str, str] = GroupCommit(commit, "failed")
    results = _submit_all(group, ["a", "b", "c"], commit)
    assert results == {"a": "A", "b": "failed", "c": "failed"}
    assert group.submit("d") == "D"  # and the next caller still leads


def test_an_interrupted_commit_wakes_its_waiters_and_hands_on_the_lead() -> None:
    # The leader of the second batch is interrupted inside the commit: it gets the
    # interruption, the others of its batch the failure, and nobody waits for ever.
    commit = _GatedCommit(fail_on="c", error=_Interrupted())
    group: GroupCommit[str, str] = GroupCommit(commit, "failed")
    results = _submit_all(group, ["a", "b", "c"], commit)
    assert results["a"] == "A"
    assert sorted([results["b"], results["c"]]) == ["failed", "interrupted"]
    assert group.submit("d") == "D"


class _GatedStore(InstanceStore):
    """The real store, whose first write waits until the gate opens; writing to
    ``broken`` fails."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = threading.Event()
        self.writes = 0
        self.broken: Path | None = None

    def write_atomic(self, path: Path, data: bytes) -> None:
        self.writes += 1
        if self.writes == 1:
            assert self.gate.wait(10)
        if path == self.broken:
            raise StorageError(f"cannot write {path}: broken for the test")
        super().write_atomic(path, data)


Send = tuple[tuple[Dataset, bytes, str], Origin]


def _send(ds: Dataset, sender: str) -> Send:
    encoded = file_path(ds).read_bytes()
    parsed = pydicom.dcmread(io.BytesIO(encoded))
    origin = Origin(sender, "ENHANCE", f"{sender} (C-STORE)")
    return (parsed, encoded, str(parsed.file_meta.TransferSyntaxUID)), origin


def _in_a_group(receiver: Receiver, store: _GatedStore, sends: list[Send]) -> list[IngestResult]:
    """The first send leads and waits in its write; the others arrive meanwhile (as on
    parallel associations) and are committed together next."""
    results: list[IngestResult | None] = [None] * len(sends)

    def run(index: int) -> None:
        (ds, encoded, syntax), origin = sends[index]
        results[index] = receiver.accept(ds, encoded, syntax, origin)

    first = _start(lambda: run(0))
    _wait_for(lambda: store.writes == 1)
    others = [_start(lambda i=i: run(i)) for i in range(1, len(sends))]  # type: ignore[misc]
    _wait_for(lambda: receiver.group.waiting() == len(others))
    store.gate.set()
    _join([first, *others])
    return [r for r in results if r is not None]


def _senders(repository: JobRepository) -> dict[str, str]:
    """The sender of each recorded instance, in the order the rows were inserted."""
    with repository._sessions() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.calling_ae_title).order_by(Instance.id)
        )
        return {uid: sender for uid, sender in rows}


def test_instances_of_parallel_associations_are_stored_together_with_their_own_senders(
    tmp_path: Path, repository: JobRepository
) -> None:
    store = _GatedStore(tmp_path / "data")
    receiver = Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
    [first] = make_ct_series(tmp_path / "a", n_slices=1, rows=16, cols=16, seed=3)
    others = make_ct_series(tmp_path / "b", n_slices=3, rows=16, cols=16, seed=4)
    sends = [_send(first, "CT0"), *(_send(ds, f"CT{i + 1}") for i, ds in enumerate(others))]
    results = _in_a_group(receiver, store, sends)
    assert [(r.ok, r.duplicate) for r in results] == [(True, False)] * 4
    assert (receiver.group.batches, receiver.group.largest) == (2, 3)
    senders = _senders(repository)
    assert senders == {str(ds.SOPInstanceUID): f"CT{i}" for i, ds in enumerate([first, *others])}
    # The second series' job was opened inside the group: by the instance recorded first,
    # whose sender it names.
    jobs = {job.instance_count: job for job in repository.list_jobs()}
    assert jobs[1].calling_ae_title == "CT0"
    opener = next(uid for uid in senders if uid != str(first.SOPInstanceUID))
    assert jobs[3].calling_ae_title == senders[opener]
    for ds in [first, *others]:
        stored = store.received_path(str(ds.SOPInstanceUID)).read_bytes()
        assert stored == file_path(ds).read_bytes()


def test_one_instance_sent_twice_in_a_group_is_stored_once(
    tmp_path: Path, repository: JobRepository
) -> None:
    store = _GatedStore(tmp_path / "data")
    receiver = Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
    [first] = make_ct_series(tmp_path / "a", n_slices=1, rows=16, cols=16, seed=5)
    [twice] = make_ct_series(tmp_path / "b", n_slices=1, rows=16, cols=16, seed=6)
    results = _in_a_group(receiver, store, [_send(first, "CT0"), _send(twice, "CT1"),
                                             _send(twice, "CT2")])  # fmt: skip
    assert all(r.ok for r in results)
    assert sorted(r.duplicate for r in results[1:]) == [False, True]
    assert len(_senders(repository)) == 2 and store.writes == 2


def test_a_write_that_fails_in_a_group_fails_only_its_own_instance(
    tmp_path: Path, repository: JobRepository
) -> None:
    store = _GatedStore(tmp_path / "data")
    receiver = Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
    series = make_ct_series(tmp_path / "a", n_slices=4, rows=16, cols=16, seed=7)
    store.broken = store.received_path(str(series[2].SOPInstanceUID))
    results = _in_a_group(receiver, store, [_send(ds, f"CT{i}") for i, ds in enumerate(series)])
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].status == OUT_OF_RESOURCES and "broken for the test" in (
        results[2].message or ""
    )
    assert set(_senders(repository)) == {str(series[i].SOPInstanceUID) for i in (0, 1, 3)}
    files = {p for p in store.received_dir.rglob("*") if p.is_file()}
    assert files == {store.received_path(str(series[i].SOPInstanceUID)) for i in (0, 1, 3)}


def test_a_stow_rs_request_is_stored_without_the_group(
    tmp_path: Path, repository: JobRepository
) -> None:
    receiver = Receiver(InstanceStore(tmp_path / "data"), repository,
                        Routing.simple("ENHANCE", "identity"))  # fmt: skip
    sends = [_send(ds, "STOW") for ds in make_ct_series(tmp_path / "a", n_slices=3, rows=16,
                                                         cols=16, seed=8)]  # fmt: skip
    origin = Origin(None, None, "STOW-RS test", "STOW-RS")
    assert all(r.ok for r in receiver.accept_many([item for item, _ in sends], origin))
    assert receiver.group.batches == 0 and len(_senders(repository)) == 3


def test_a_refused_instance_never_joins_a_group(tmp_path: Path, repository: JobRepository) -> None:
    store = InstanceStore(tmp_path / "data")
    receiver = Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
    [ds] = make_ct_series(tmp_path / "in", n_slices=1, rows=16, cols=16, seed=4)
    encoded = file_path(ds).read_bytes()
    parsed = pydicom.dcmread(io.BytesIO(encoded))
    del parsed.PixelData
    result = receiver.accept(parsed, encoded, str(parsed.file_meta.TransferSyntaxUID),
                             Origin("CT", "ENHANCE", "CT (C-STORE)"))  # fmt: skip
    assert not result.ok and result.status != OUT_OF_RESOURCES
    assert receiver.group.batches == 0 and repository.list_jobs() == []
