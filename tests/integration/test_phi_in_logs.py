"""Patient identifiers never leave the places that must hold them: a real node receives
series carrying a planted patient name, ID and birth date and is driven through its
failure paths; its logs, its Celery messages, the job reasons and what a viewer-role
token reads hold none of them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from pacs_node.api.multipart import build_related
from pacs_node.db.models import Series, utcnow
from pacs_node.db.session import make_engine
from tests.helpers.synthetic import file_path, make_ct_series, truncate_pixel_data
from tests.integration.node import NodeProcess
from tests.integration.peers import CaptureSCP

pytestmark = [pytest.mark.integration]

NAME, PATIENT_ID, BIRTH = "Secretname^Jane", "PHI-7731-X", "19411203"
PLANTED = ("Secretname", "PHI-7731-X", "19411203")


def _plant(datasets: list[Dataset]) -> list[Dataset]:
    for ds in datasets:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PATIENT_ID, BIRTH
        ds.save_as(file_path(ds), enforce_file_format=True)
    return datasets


def _send(port: int, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ENHANCE")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def _leaks(text: str) -> list[str]:
    return [p for p in PLANTED if p in text]


def test_no_patient_identifier_in_logs_messages_or_viewer_answers(tmp_path: Path) -> None:
    good = _plant(make_ct_series(tmp_path / "good", n_slices=3, rows=32, cols=32))
    mixed = _plant(
        make_ct_series(tmp_path / "mixed", n_slices=2, rows=32, cols=32, seed=1)
        + make_ct_series(tmp_path / "mixed2", n_slices=1, rows=48, cols=48, seed=1)
    )
    for ds in mixed:  # one series of two matrix sizes: the worker fails it
        ds.SeriesInstanceUID = mixed[0].SeriesInstanceUID
        ds.StudyInstanceUID = mixed[0].StudyInstanceUID
        ds.save_as(file_path(ds), enforce_file_format=True)
    [bad_uid] = _plant(make_ct_series(tmp_path / "bad", n_slices=1, rows=32, cols=32, seed=2))
    bad_uid.SeriesInstanceUID = "1.2." + "9" * 70
    [truncated] = _plant(make_ct_series(tmp_path / "trunc", n_slices=1, rows=32, cols=32, seed=3))
    truncate_pixel_data(truncated)
    [stowed] = _plant(make_ct_series(tmp_path / "stow", n_slices=1, rows=32, cols=32, seed=4))

    with (
        CaptureSCP("PACS", store_status=0xA700) as pacs,  # every send refused
        NodeProcess(
            tmp_path / "node", preset="identity", destination=f"PACS@127.0.0.1:{pacs.port}",
            worker__max_attempts="2", worker__retry_backoff_s="0.5", log_level="DEBUG",
        ) as node,
    ):  # fmt: skip
        assert _send(node.port, good) == [0, 0, 0]
        assert _send(node.port, mixed) == [0, 0, 0]
        assert _send(node.port, [bad_uid]) == [0xA900]
        assert _send(node.port, [truncated]) == [0xC210]
        chunks, content_type = build_related(
            [(file_path(stowed).read_bytes(), "application/dicom"), (b"junk", "application/dicom")],
            "application/dicom",
        )
        sender = {"Authorization": f"Bearer {node.token('pacs', 'dicomweb-write')}"}
        stow = httpx.post(
            f"http://127.0.0.1:{node.http_port}/dicom-web/studies",
            content=b"".join(chunks), headers={"Content-Type": content_type, **sender},
            timeout=30,
        )  # fmt: skip
        assert stow.status_code == 202
        jobs = node.wait_until_finished(3, timeout_s=120)
        assert sorted(j["status"] for j in jobs) == ["FAILED", "FAILED", "FAILED"]

        headers = {"Authorization": f"Bearer {node.token('v', 'viewer')}"}
        api = f"http://127.0.0.1:{node.http_port}/api/jobs"
        seen = [httpx.get(api, headers=headers, timeout=30).text]
        qido = f"http://127.0.0.1:{node.http_port}/dicom-web/studies"
        seen.append(httpx.get(qido, headers=headers, timeout=30).text)
        assert "(hidden)" in seen[-1]
        seen += [httpx.get(f"{api}/{j['id']}", headers=headers, timeout=30).text for j in jobs]
        reasons = [str(node.job(j["id"]).get("error_message")) for j in jobs]
        events = [e["message"] for j in jobs for e in node.job(j["id"])["events"]]
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "node").glob("*.log"))
    assert "refused" in logs  # the logs did record the faults
    broker = sqlite3.connect(tmp_path / "node" / "broker.sqlite")
    messages = " ".join(str(row) for row in broker.execute("SELECT payload FROM kombu_message"))
    assert messages  # the tasks went through the broker
    places = {"logs": logs, "broker": messages, "viewer API": " ".join(seen),
              "job reasons": " ".join(reasons), "events": " ".join(events)}  # fmt: skip
    for where, text in places.items():
        assert _leaks(text) == [], where


def test_a_database_error_does_not_carry_the_statements_values(db_url: str) -> None:
    engine = make_engine(db_url)
    row = {"study_instance_uid": "1.2", "series_instance_uid": "1.2.3", "patient_name": NAME,
           "patient_id": PATIENT_ID, "created_at": utcnow()}  # fmt: skip
    with engine.begin() as connection:
        connection.execute(insert(Series), row)
    with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
        connection.execute(insert(Series), row)  # the same series again: unique violation
    assert _leaks(str(raised.value)) == []
    assert "hidden due to hide_parameters" in str(raised.value)
