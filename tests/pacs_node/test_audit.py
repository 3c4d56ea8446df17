"""The invariants auditor finds each kind of broken invariant, and nothing on a sound node."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

from pacs_node.audit import audit
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository, Route
from pacs_node.storage import InstanceStore
from tests.pacs_node.db.test_repository import _instance


def _received(repository: JobRepository, store: InstanceStore, sop: str, series: str) -> int:
    path = store.received_path(sop)
    store.write_atomic(path, b"DICM")
    item = dataclasses.replace(_instance(sop, series=series), path=str(path))
    job_id = repository.record_instance(item, route=Route("p")).job_id
    assert job_id is not None
    return job_id


def test_a_sound_node_passes_and_each_fault_is_named(
    repository: JobRepository, tmp_path: Path
) -> None:
    store = InstanceStore(tmp_path)
    sessions = repository.session_factory
    done = _received(repository, store, "1.1", "1.9")
    repository.close_receiving(done, timedelta(0), None)
    assert repository.claim(done, "w1", lease=timedelta(minutes=1))
    derived = store.derived_path("2.25.9", "2.25.1")
    store.write_atomic(derived, b"DICM")
    repository.replace_outputs(done, "2.25.9", [("2.25.1", "1.1", str(derived))])
    repository.transition(done, JobStatus.DONE, "stored")
    assert audit(sessions, store) == []

    running = _received(repository, store, "3.1", "3.9")
    assert [f.invariant for f in audit(sessions, store)] == [2]  # not settled yet
    assert audit(sessions, store, settled=False) == []
    repository.close_receiving(running, timedelta(0), None)
    repository.claim(running, "w1")  # claimed without a lease
    store.received_path("3.1").unlink()  # its input file is gone
    (store.received_dir / "stray.tmp").write_bytes(b"half")  # a leftover temporary file
    failed = _received(repository, store, "4.1", "4.9")
    repository.transition(failed, JobStatus.FAILED, "")  # no reason
    found = {(f.invariant, f.detail.split()[0]) for f in audit(sessions, store, settled=False)}
    assert found == {(4, "job"), (5, "instance"), (5, "orphan"), (6, "job")}

    repository.replace_outputs(done, "2.25.9", [])  # a DONE job without its outputs
    details = [f.detail for f in audit(sessions, store, settled=False) if f.invariant == 3]
    assert details == [f"job {done}: no output for 1 of its 1 instances"]
