"""Durable storage: hashed names, atomic writes, no trace of a failed write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pacs_node import storage
from pacs_node.errors import StorageError
from pacs_node.storage import InstanceStore


def test_paths_never_contain_received_strings(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    hostile = "../../etc/passwd"
    path = store.received_path(hostile)
    assert path.is_relative_to(tmp_path / "received")
    assert "passwd" not in str(path) and ".." not in path.parts
    assert store.received_path(hostile) == path  # stable, so a duplicate maps to one file
    assert store.received_path("1.2.3") != path
    derived = store.derived_path("1.2.3", hostile)
    assert derived.is_relative_to(tmp_path / "derived") and ".." not in derived.parts


def test_write_atomic_writes_all_bytes_and_leaves_no_temp(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    path = store.received_path("1.2.840.1")
    store.write_atomic(path, b"DICM" * 1000)
    assert path.read_bytes() == b"DICM" * 1000
    store.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "received"
    blocker.write_text("a file where the directory should be")
    store = InstanceStore(tmp_path)
    with pytest.raises(StorageError, match="cannot write"):
        store.write_atomic(store.received_path("1.2.3"), b"x")


def test_a_folder_removed_behind_the_store_is_made_again(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    first = store.received_path("1.2.3")
    store.write_atomic(first, b"one")
    first.unlink()
    first.parent.rmdir()  # e.g. an operator's clean-up
    store.write_atomic(first, b"again")
    assert first.read_bytes() == b"again"


def test_folders_made_for_a_file_are_flushed_in_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file flushed in a new folder whose own entry is lost in a power cut would be
    lost with it: each folder made is flushed in its parent, once."""
    flushed: list[int] = []  # inodes of what os.fsync was called on
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        flushed.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    store = InstanceStore(tmp_path / "data")
    path = store.received_path("1.2.3")
    store.write_atomic(path, b"one")
    folders = [tmp_path, tmp_path / "data", tmp_path / "data" / "received", path.parent]
    for folder in folders:  # each parent of a folder made, and the file's own folder
        assert folder.stat().st_ino in flushed, folder
    assert path.stat().st_ino in flushed  # the file itself (flushed before its rename)
    flushed.clear()
    store.write_atomic(path, b"again")  # no folder made
    assert len(flushed) == 2  # the file and its folder only
    # A folder another store (thread, process) made may not be flushed yet: a store that
    # sees it for the first time flushes its entry too.
    flushed.clear()
    InstanceStore(tmp_path / "data").write_atomic(path, b"third")
    assert (tmp_path / "data" / "received").stat().st_ino in flushed


def test_write_many_writes_every_file_durably_with_no_temporaries(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    items = [(store.received_path(f"1.2.{i}"), f"data {i}".encode() * 100) for i in range(12)]
    store.write_many(items)
    for path, data in items:
        assert path.read_bytes() == data
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    store.write_many(items[:2])  # a small batch: one file at a time, the same result
    assert items[0][0].read_bytes() == items[0][1]


@pytest.mark.skipif(storage._SYNCFS is None, reason="needs syncfs (Linux 5.8 or later)")
def test_write_many_failure_leaves_no_temporary_and_no_file(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path)
    items = [(store.received_path(f"1.3.{i}"), b"x" * 10) for i in range(6)]
    blocked = items[3][0].parent
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the folder should be")
    with pytest.raises(StorageError, match="cannot write 6 files"):
        store.write_many(items)
    left = [p for p in tmp_path.rglob("*") if p.is_file() and p != blocked]
    assert left == []  # nothing renamed into place, no temporary left
