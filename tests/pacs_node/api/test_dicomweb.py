"""DICOMweb over real HTTP: STOW-RS with dicomweb-client and curl, QIDO-RS, WADO-RS."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from requests.exceptions import HTTPError
from sqlalchemy import Engine

from pacs_node.admin import TokenStore
from pacs_node.admission import DiskGuard
from pacs_node.api.app import Readiness, create_app
from pacs_node.api.multipart import build_related, parse_content_type, split_related
from pacs_node.completion import CompletionMonitor
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository
from pacs_node.dispatch import Dispatcher
from pacs_node.ingest import Receiver
from pacs_node.metrics import ReceiverMetrics
from pacs_node.routing import Routing
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore
from tests.helpers.synthetic import file_path, make_ct_series, truncate_pixel_data
from tests.integration.peers import free_port


@dataclass
class Server:
    url: str
    repository: JobRepository
    store: InstanceStore
    disk: DiskGuard
    token: str  # an admin's: stores, searches and retrieves
    http: httpx.Client

    @property
    def client(self) -> DICOMwebClient:
        return DICOMwebClient(
            url=f"{self.url}/dicom-web", headers={"Authorization": f"Bearer {self.token}"}
        )


@pytest.fixture()
def server(tmp_path: Path, repository: JobRepository, engine: Engine) -> Iterator[Server]:
    store = InstanceStore(tmp_path / "data")
    registry = CollectorRegistry()
    routing = Routing.simple("ENHANCE", "ct-denoise")
    disk = DiskGuard(tmp_path, max_used_percent=100.0, min_free_gib=0.0)  # never full
    receiver = Receiver(store, repository, routing, ReceiverMetrics(registry), disk)
    port = free_port()
    app = create_app(repository, engine, receiver, registry=registry)
    http = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not http.started and time.monotonic() < deadline:
        time.sleep(0.05)
    token = TokenStore(repository.session_factory).create("ops", "admin")
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        yield Server(f"http://127.0.0.1:{port}", repository, store, disk, token, client)
    http.should_exit = True
    thread.join(timeout=10)


def _encoded(ds: Dataset) -> bytes:
    return file_path(ds).read_bytes()


def _stow_raw(
    server: Server, parts: list[bytes], path: str = "/dicom-web/studies"
) -> httpx.Response:
    chunks, header = build_related(((p, "application/dicom") for p in parts), "application/dicom")
    return server.http.post(
        server.url + path, content=b"".join(chunks), headers={"Content-Type": header}
    )


def test_a_series_sent_in_several_requests_becomes_one_job(server: Server, tmp_path: Path) -> None:
    """The end of a request declares its series complete, but the job closes only once the
    series has been quiet for ``dicomweb.complete_after_s``: a client that sends one series
    in several requests gets one job, not one per request (a series processed in parts)."""
    series = make_ct_series(tmp_path / "in", n_slices=6, rows=32, cols=32)
    dispatcher = Dispatcher(f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}", "q")
    # 3 s: the time from a request's last instance to the next monitor round stays below
    # it even on a loaded machine.
    monitor = CompletionMonitor(server.repository, dispatcher, 3600.0, 1.0,
                                "PACS Enhancement Node", declared_complete_after_s=3.0)  # fmt: skip
    try:
        for start in (0, 2, 4):  # three requests, the monitor running between them
            assert _stow_raw(server, [_encoded(ds) for ds in series[start : start + 2]]).is_success
            monitor.run_once()
        [job] = server.repository.list_jobs()
        assert job.status is JobStatus.RECEIVING and job.instance_count == 6
        time.sleep(3.2)  # quiet for complete_after_s: closed although series_timeout_s is 1 h
        monitor.run_once()
        [job] = server.repository.list_jobs()
        assert job.status is JobStatus.QUEUED and job.instance_count == 6
    finally:
        dispatcher.close()


def test_stow_stores_durably_and_declares_the_series_complete(
    server: Server, tmp_path: Path
) -> None:
    series = make_ct_series(tmp_path / "in", n_slices=3, rows=32, cols=32)
    response = server.client.store_instances(series)
    stored = response.ReferencedSOPSequence
    assert sorted(i.ReferencedSOPInstanceUID for i in stored) == sorted(
        ds.SOPInstanceUID for ds in series
    )
    assert "FailedSOPSequence" not in response
    assert response.RetrieveURL.endswith(f"/dicom-web/studies/{series[0].StudyInstanceUID}")
    # Declared complete: the job is due now although the quiet period is an hour.
    [job_id] = server.repository.due_receiving_jobs(timedelta(hours=1))
    job = server.repository.get_job(job_id)
    assert job is not None and job.instance_count == 3
    assert any("declared complete by STOW-RS" in e.message for e in job.events)
    assert job.calling_ae_title is None
    for ds in series:
        assert server.repository.find_instance(ds.SOPInstanceUID)
        # dicomweb-client re-encodes what it sends: the stored file decodes to the same data.
        assert pydicom.dcmread(server.store.received_path(ds.SOPInstanceUID)) == ds
    # The same instances again are duplicates: success, nothing stored twice.
    again = server.client.store_instances(series)
    assert len(again.ReferencedSOPSequence) == 3
    job = server.repository.get_job(job_id)
    assert job is not None and job.instance_count == 3


def test_stow_of_many_instances_stores_them_together_each_once(
    server: Server, tmp_path: Path
) -> None:
    """A request of two series (stored together: one flush, one transaction per series),
    an instance sent twice in it and one stored before: every one answered success, each
    stored once, counted once on its series' job."""
    first = make_ct_series(tmp_path / "a", n_slices=6, rows=32, cols=32, seed=3)
    second = make_ct_series(tmp_path / "b", n_slices=4, rows=32, cols=32, seed=4)
    assert _stow_raw(server, [_encoded(second[0])]).status_code == 200  # stored before
    parts = [_encoded(ds) for ds in first + second] + [_encoded(first[2])]
    response = _stow_raw(server, parts)
    assert response.status_code == 200
    body = Dataset.from_json(response.json())
    assert len(body.ReferencedSOPSequence) == 11 and "FailedSOPSequence" not in body
    jobs = {job.series_instance_uid: job for job in server.repository.list_jobs()}
    assert jobs[first[0].SeriesInstanceUID].instance_count == 6
    assert jobs[second[0].SeriesInstanceUID].instance_count == 4
    for ds in first + second:
        assert pydicom.dcmread(server.store.received_path(ds.SOPInstanceUID)) == ds
    files = [p for p in server.store.root.rglob("*") if p.is_file()]
    assert len(files) == 10 and not [p for p in files if p.name.startswith(".tmp-")]


def test_a_large_stow_request_is_stored_in_bounded_batches(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pacs_node.api.dicomweb as dicomweb

    monkeypatch.setattr(dicomweb, "STOW_BATCH_INSTANCES", 4)
    series = make_ct_series(tmp_path / "in", n_slices=10, rows=32, cols=32, seed=5)
    response = _stow_raw(server, [_encoded(ds) for ds in series])
    assert response.status_code == 200
    assert len(Dataset.from_json(response.json()).ReferencedSOPSequence) == 10
    [job] = server.repository.list_jobs()
    assert job.instance_count == 10
    assert all(server.repository.find_instance(ds.SOPInstanceUID) for ds in series)


def test_stow_answers_507_while_the_disk_is_past_its_watermark(
    server: Server, tmp_path: Path
) -> None:
    series = make_ct_series(tmp_path / "in", n_slices=2, rows=32, cols=32)
    server.disk.min_free_bytes = 2**63  # more free space than any disk has: "full"
    response = _stow_raw(server, [_encoded(ds) for ds in series])
    assert response.status_code == 507
    assert "watermark" in response.json()["detail"]
    assert server.repository.list_jobs() == []
    assert not any(p.is_file() for p in server.store.root.rglob("*"))
    server.disk.min_free_bytes = 0  # space is back
    assert _stow_raw(server, [_encoded(ds) for ds in series]).status_code == 200
    [job] = server.repository.list_jobs()
    assert job.instance_count == 2


def test_stow_reports_each_failure_with_its_reason(server: Server, tmp_path: Path) -> None:
    good, truncated = make_ct_series(tmp_path / "a", n_slices=2, rows=32, cols=32, seed=1)
    truncate_pixel_data(truncated)
    truncated.save_as(file_path(truncated), enforce_file_format=True)
    [other_study] = make_ct_series(tmp_path / "b", n_slices=1, rows=32, cols=32, seed=2)
    response = _stow_raw(
        server,
        [_encoded(good), _encoded(truncated), _encoded(other_study), b"not dicom at all"],
        f"/dicom-web/studies/{good.StudyInstanceUID}",
    )
    assert response.status_code == 202  # some stored, some failed (PS3.18 10.5.3)
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = Dataset.from_json(response.json())
    assert [i.ReferencedSOPInstanceUID for i in body.ReferencedSOPSequence] == [good.SOPInstanceUID]
    failed = {i.ReferencedSOPInstanceUID: i for i in body.FailedSOPSequence}
    assert failed[truncated.SOPInstanceUID].FailureReason == 0xC210
    assert "truncated" in failed[truncated.SOPInstanceUID][0x00000902].value
    assert failed[other_study.SOPInstanceUID].FailureReason == 0xA900
    assert failed[""].FailureReason == 0xC210  # the part that is not DICOM
    assert not server.repository.find_instance(truncated.SOPInstanceUID)
    # Nothing stored at all: 409.
    assert _stow_raw(server, [_encoded(truncated)]).status_code == 409
    # Every outcome is counted in the Prometheus metrics.
    metrics = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(server.http.get(f"{server.url}/metrics").text)
        for sample in family.samples
    }
    stow = ("protocol", "STOW-RS")
    assert metrics[("pacs_node_instances_received_total", (stow,))] == 1
    assert metrics[("pacs_node_instances_rejected_total", (stow, ("status", "0xC210")))] == 3
    assert metrics[("pacs_node_instances_rejected_total", (stow, ("status", "0xA900")))] == 1
    assert metrics[("pacs_node_jobs", (("state", "RECEIVING"),))] == 1  # no monitor here
    assert metrics[("pacs_node_queue_depth", ())] == 0


def test_stow_refuses_bad_requests_with_http_errors(server: Server, tmp_path: Path) -> None:
    [ds] = make_ct_series(tmp_path, n_slices=1, rows=16, cols=16)
    url = f"{server.url}/dicom-web/studies"
    assert server.http.post(url, content=_encoded(ds),
                      headers={"Content-Type": "application/dicom"}).status_code == 415  # fmt: skip
    json_parts = 'multipart/related; type="application/dicom+json"; boundary=x'
    assert (
        server.http.post(url, content=b"--x--", headers={"Content-Type": json_parts}).status_code
        == 415
    )
    chunks, header = build_related([(_encoded(ds), "application/dicom")], "application/dicom")
    truncated_body = b"".join(chunks)[:-40]  # no closing boundary: an interrupted upload
    response = server.http.post(url, content=truncated_body, headers={"Content-Type": header})
    assert response.status_code == 400 and "closing boundary" in response.text
    assert not server.repository.find_instance(ds.SOPInstanceUID)


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="curl not installed (make test installs it)"
)
def test_stow_with_curl(server: Server, tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "in", n_slices=2, rows=16, cols=16)
    boundary = "pacs-node-test-boundary"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
        + _encoded(ds) + b"\r\n" for ds in series
    ) + b"--" + boundary.encode() + b"--\r\n"  # fmt: skip
    (tmp_path / "body").write_bytes(body)
    result = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-X", "POST",
         "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}',
         "-H", "Accept: application/dicom+json", "-H", f"Authorization: Bearer {server.token}",
         "--data-binary", f"@{tmp_path / 'body'}", f"{server.url}/dicom-web/studies"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    text, code = result.stdout.rsplit("\n", 1)
    assert code == "200"
    assert len(Dataset.from_json(text).ReferencedSOPSequence) == 2


def test_wado_returns_the_stored_bytes_and_metadata(server: Server, tmp_path: Path) -> None:
    series = make_ct_series(tmp_path / "in", n_slices=3, rows=32, cols=32)
    assert _stow_raw(server, [_encoded(ds) for ds in series]).status_code == 200
    study, uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    retrieved = server.client.retrieve_series(study, uid)
    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(
        ds.SOPInstanceUID for ds in series
    )
    # Byte for byte what was stored, through a plain HTTP client and our own parser.
    first = series[0]
    response = server.http.get(
        f"{server.url}/dicom-web/studies/{study}/series/{uid}/instances/{first.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    content_type = parse_content_type(response.headers["content-type"])
    [(headers, payload)] = split_related(response.content, content_type.params["boundary"])
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert payload == _encoded(first)
    metadata = server.client.retrieve_series_metadata(study, uid)
    assert len(metadata) == 3 and all("7FE00010" not in m for m in metadata)
    assert {Dataset.from_json(m).SOPInstanceUID for m in metadata} == {
        ds.SOPInstanceUID for ds in series
    }
    assert server.http.get(f"{server.url}/dicom-web/studies/1.2.3.4").status_code == 404
    not_acceptable = server.http.get(f"{server.url}/dicom-web/studies/{study}",
                               headers={"Accept": "image/jpeg"})  # fmt: skip
    assert not_acceptable.status_code == 406


def test_qido_filters_and_pages(server: Server, tmp_path: Path) -> None:
    ct = make_ct_series(tmp_path / "ct", n_slices=2, rows=16, cols=16, seed=1)
    mr = make_ct_series(tmp_path / "mr", n_slices=3, rows=16, cols=16, seed=2,
                        study_uid=ct[0].StudyInstanceUID, modality="MR")  # fmt: skip
    other = make_ct_series(tmp_path / "other", n_slices=1, rows=16, cols=16, seed=3)
    for ds in other:
        ds.PatientID, ds.PatientName = "OTHER-7", "Other^Person"
        ds.save_as(file_path(ds), enforce_file_format=True)
    for group in (ct, mr, other):
        server.client.store_instances(group)
    client = server.client
    assert len(client.search_for_studies()) == 2
    [study] = client.search_for_studies(search_filters={"PatientID": "OTHER-7"})
    assert Dataset.from_json(study).StudyInstanceUID == other[0].StudyInstanceUID
    assert len(client.search_for_studies(search_filters={"PatientName": "Oth*"})) == 1
    [both] = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    parsed = Dataset.from_json(both)
    assert list(parsed.ModalitiesInStudy) == ["CT", "MR"]
    assert parsed.NumberOfStudyRelatedSeries == 2 and parsed.NumberOfStudyRelatedInstances == 5
    series = client.search_for_series(ct[0].StudyInstanceUID, search_filters={"Modality": "MR"})
    assert [Dataset.from_json(s).SeriesInstanceUID for s in series] == [mr[0].SeriesInstanceUID]
    instances = client.search_for_instances(ct[0].StudyInstanceUID, mr[0].SeriesInstanceUID)
    assert len(instances) == 3
    paged = client.search_for_instances(ct[0].StudyInstanceUID, limit=2, offset=4)
    assert len(paged) == 1
    with pytest.raises(HTTPError) as refused:
        client.search_for_studies(search_filters={"ReferringPhysicianName": "X"})
    assert refused.value.response.status_code == 400


def test_derived_series_are_searchable_and_retrievable(server: Server, tmp_path: Path) -> None:
    source = make_ct_series(tmp_path / "in", n_slices=2, rows=16, cols=16)
    server.client.store_instances(source)
    [job_id] = server.repository.due_receiving_jobs(timedelta(hours=1))
    derived = make_ct_series(tmp_path / "out", n_slices=2, rows=16, cols=16, seed=9,
                             study_uid=source[0].StudyInstanceUID,
                             series_description="Synthetic phantom [ct-denoise]")  # fmt: skip
    server.repository.replace_outputs(
        job_id,
        derived[0].SeriesInstanceUID,
        [
            (d.SOPInstanceUID, s.SOPInstanceUID, str(file_path(d)))
            for d, s in zip(derived, source, strict=True)
        ],
    )
    series = server.client.search_for_series(source[0].StudyInstanceUID)
    descriptions = sorted(Dataset.from_json(s).SeriesDescription for s in series)
    assert descriptions == ["Synthetic phantom", "Synthetic phantom [ct-denoise]"]
    retrieved = server.client.retrieve_series(
        source[0].StudyInstanceUID, derived[0].SeriesInstanceUID
    )
    assert {ds.SOPInstanceUID for ds in retrieved} == {d.SOPInstanceUID for d in derived}
    [read_back] = [
        pydicom.dcmread(file_path(d))
        for d in derived
        if d.SOPInstanceUID == retrieved[0].SOPInstanceUID
    ]
    assert read_back.pixel_array.tobytes() == retrieved[0].pixel_array.tobytes()


def test_dicomweb_needs_a_token_whose_role_allows_the_service(
    server: Server, tmp_path: Path
) -> None:
    [ds] = make_ct_series(tmp_path / "in", n_slices=1, rows=16, cols=16)
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-42"
    ds.save_as(file_path(ds), enforce_file_format=True)
    tokens = TokenStore(server.repository.session_factory)
    roles = {role: tokens.create(role, role) for role in ("viewer", "worker", "dicomweb-write")}
    roles["physicist"] = tokens.create("physicist", "viewer", show_patient=True)
    chunks, header = build_related([(_encoded(ds), "application/dicom")], "application/dicom")
    body = b"".join(chunks)
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    wado = f"{server.url}/dicom-web/studies/{study}/series/{series}"
    qido = f"{server.url}/dicom-web/studies"

    def call(method: str, url: str, token: str | None, **kwargs: object) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))  # type: ignore[arg-type]
        return httpx.request(method, url, headers=headers, timeout=30, **kwargs).status_code  # type: ignore[arg-type]

    stow = {"content": body, "headers": {"Content-Type": header}}
    for token in (None, "pn_wrong", roles["viewer"], roles["worker"]):
        assert call("POST", qido, token, **stow) in (401, 403), token
    assert call("POST", qido, roles["dicomweb-write"], **stow) == 200
    # Search: not for a sending PACS; viewers see the patient hidden and cannot search by it.
    assert call("GET", qido, None) == 401
    assert call("GET", qido, roles["dicomweb-write"]) == 403
    hidden = httpx.get(qido, headers={"Authorization": f"Bearer {roles['viewer']}"}, timeout=30)
    assert hidden.status_code == 200 and "PID-42" not in hidden.text and "Doe" not in hidden.text
    assert "(hidden)" in hidden.text
    assert call("GET", f"{qido}?PatientID=PID-42", roles["viewer"]) == 403
    shown = httpx.get(qido, headers={"Authorization": f"Bearer {roles['physicist']}"}, timeout=30)
    assert "PID-42" in shown.text
    # Retrieval carries the identifiers: admins, workers and viewers allowed to see them.
    assert call("GET", wado, roles["viewer"]) == 403
    assert call("GET", f"{wado}/metadata", roles["viewer"]) == 403
    assert call("GET", wado, roles["dicomweb-write"]) == 403
    for allowed in (roles["worker"], roles["physicist"], server.token):
        assert call("GET", wado, allowed) == 200


def test_an_open_dicomweb_answers_without_a_token_and_says_so(
    repository: JobRepository, engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, dicomweb={"allow_anonymous": True})
    store = InstanceStore(tmp_path / "data")
    receiver = Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
    with caplog.at_level("WARNING"):
        app = create_app(repository, engine, receiver, Readiness(settings),
                         registry=CollectorRegistry())  # fmt: skip
    assert any("DICOMweb is open" in r.message for r in caplog.records)
    client = TestClient(app)
    [ds] = make_ct_series(tmp_path / "in", n_slices=1, rows=16, cols=16)
    chunks, header = build_related([(_encoded(ds), "application/dicom")], "application/dicom")
    stored = client.post("/dicom-web/studies", content=b"".join(chunks),
                         headers={"Content-Type": header})  # fmt: skip
    assert stored.status_code == 200
    assert client.get("/dicom-web/studies").status_code == 200
    assert client.get("/api/jobs").status_code == 401  # the admin API still needs a token


def test_wado_sends_explicit_vr_le_by_default_and_as_stored_on_request(
    server: Server, transfer_syntax_dir: Path
) -> None:
    stored_file = transfer_syntax_dir / "CT1_J2KR.dcm"  # JPEG 2000 lossless, as received
    original = pydicom.dcmread(stored_file)
    assert _stow_raw(server, [stored_file.read_bytes()]).status_code == 200
    url = (f"{server.url}/dicom-web/studies/{original.StudyInstanceUID}/series/"
           f"{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}")  # fmt: skip

    def part(accept: str) -> tuple[int, dict[str, str], bytes]:
        response = server.http.get(url, headers={"Accept": accept})
        if response.status_code != 200:
            return response.status_code, {}, b""
        boundary = parse_content_type(response.headers["content-type"]).params["boundary"]
        [(headers, payload)] = split_related(response.content, boundary)
        return 200, headers, payload

    related = 'multipart/related; type="application/dicom"'
    code, headers, payload = part(related)  # no transfer syntax named: Explicit VR LE
    assert code == 200 and headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2.1")
    decoded = pydicom.dcmread(DicomBytesIO(payload))
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    assert (decoded.pixel_array == original.pixel_array).all()
    code, _, payload = part(related + "; transfer-syntax=*")  # as stored, byte for byte
    assert code == 200 and payload == stored_file.read_bytes()
    code, _, payload = part(related + "; transfer-syntax=1.2.840.10008.1.2.4.90")
    assert code == 200 and payload == stored_file.read_bytes()
    assert part(related + "; transfer-syntax=1.2.840.10008.1.2.4.80")[0] == 406


def test_stow_of_undecodable_elements_is_a_refusal_not_a_server_error(
    server: Server, transfer_syntax_dir: Path
) -> None:
    # Both found by tests/pacs_node/scp/test_fuzz.py; each was an HTTP 500.
    good = (
        transfer_syntax_dir
        / "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm"
    ).read_bytes()
    unknown_vr = good.replace(b"\x08\x00\x18\x00UI", b"\x08\x00\x18\x00I4", 1)  # SOP UID
    assert unknown_vr != good
    meta_start = good.index(b"DICM") + 4
    broken_meta = good[:meta_start] + b"\x02\x00\x00\x00\x00\x00" + good[meta_start + 6 :]
    for damaged in (unknown_vr, broken_meta):
        response = _stow_raw(server, [damaged])
        assert response.status_code == 409, response.text
        [failed] = Dataset.from_json(response.json()).FailedSOPSequence
        assert failed.FailureReason == 0xC210
