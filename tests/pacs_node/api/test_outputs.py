"""Derived instances uploaded back by a worker on another host, on a real database and store."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydicom.filebase import DicomBytesIO
from sqlalchemy import Engine

from pacs_node.admin import TokenStore
from pacs_node.admission import DiskGuard
from pacs_node.api.app import create_app
from pacs_node.db.repository import JobRepository, Route
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.storage import InstanceStore
from tests.helpers.synthetic import file_path, make_ct_series
from tests.pacs_node.db.test_repository import _instance


@pytest.fixture()
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "data")


def _client(
    repository: JobRepository, engine: Engine, store: InstanceStore, full: bool
) -> TestClient:
    percent = 0.0 if full else 100.0  # 0 % allowed: the disk counts as full
    disk = DiskGuard(Path("/"), max_used_percent=percent, min_free_gib=0.0)
    receiver = Receiver(store, repository, Routing.simple("ENHANCE", "x"), None, disk)
    return TestClient(create_app(repository, engine, receiver, registry=CollectorRegistry()))


def test_a_worker_uploads_the_derived_instances_of_a_running_job(
    repository: JobRepository, engine: Engine, store: InstanceStore, tmp_path: Path
) -> None:
    [derived] = make_ct_series(tmp_path / "derived", n_slices=1, rows=16, cols=16)
    study = str(derived.StudyInstanceUID)
    job_id = repository.record_instance(_instance("1.1", study=study), Route("p")).job_id
    assert job_id is not None
    body = file_path(derived).read_bytes()
    sop = str(derived.SOPInstanceUID)
    url = f"/api/jobs/{job_id}/outputs/{sop}"
    tokens = TokenStore(repository.session_factory)
    worker = {"Authorization": f"Bearer {tokens.create('w1', 'worker')}",
              "Content-Type": "application/dicom"}  # fmt: skip
    viewer = {**worker, "Authorization": f"Bearer {tokens.create('v', 'viewer')}"}
    client = _client(repository, engine, store, full=False)

    assert client.put(url, content=body, headers=viewer).status_code == 403
    response = client.put(url, content=body, headers=worker)
    assert response.status_code == 409 and "RECEIVING" in response.json()["detail"]
    repository.close_receiving(job_id, timedelta(0), None)
    assert repository.claim(job_id, "w1", lease=timedelta(minutes=1))

    response = client.put(url, content=body, headers=worker)
    assert response.status_code == 201, response.text
    path = store.derived_path(str(derived.SeriesInstanceUID), sop)
    assert response.json()["path"] == str(path) and path.read_bytes() == body
    # Refused, and nothing written: wrong type, another SOP UID, not DICOM, another study.
    text = {**worker, "Content-Type": "text/plain"}
    assert client.put(url, content=body, headers=text).status_code == 415
    assert client.put(f"/api/jobs/{job_id}/outputs/1.2.3", content=body,
                      headers=worker).status_code == 400  # fmt: skip
    assert client.put(url, content=b"not dicom", headers=worker).status_code == 400
    derived.StudyInstanceUID = "1.2.999"
    buffer = DicomBytesIO()
    derived.save_as(buffer, enforce_file_format=True)
    other = buffer.getvalue()
    response = client.put(url, content=other, headers=worker)
    assert response.status_code == 422 and "1.2.999" in response.json()["detail"]
    assert path.read_bytes() == body
    assert client.put(f"/api/jobs/999/outputs/{sop}", content=body,
                      headers=worker).status_code == 404  # fmt: skip
    # A full disk refuses the upload before reading it (the worker retries later).
    full = _client(repository, engine, store, full=True)
    assert full.put(url, content=body, headers=worker).status_code == 507
