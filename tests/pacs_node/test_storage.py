"""Durable storage: hashed names, atomic writes, no trace of a failed write."""

from __future__ import annotations

from pathlib import Path

import pytest

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
