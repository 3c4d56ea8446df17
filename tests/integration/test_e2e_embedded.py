"""End to end, embedded mode: storescu → `pacs-node serve` (SQLite, SQLite broker,
embedded worker) → derived series in a real Orthanc or a pynetdicom storage SCP."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.helpers.synthetic import make_ct_series, truncate_pixel_data
from tests.integration.checks import assert_derived_series
from tests.integration.node import NodeProcess
from tests.integration.peers import CaptureSCP, OrthancPeer, echoscu, orthanc_binary, storescu

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("storescu") is None, reason="dcmtk not installed (make test installs it)"
    ),
]


def _assert_job_trail(job: dict[str, object], instances: int) -> None:
    assert job["status"] == "DONE", job
    assert job["instance_count"] == instances and job["attempts"] == 1
    statuses = [e["status"] for e in job["events"]]  # type: ignore[index, union-attr]
    assert statuses[0] == "RECEIVING" and statuses[-1] == "DONE"
    order = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert order == ["RECEIVING", "QUEUED", "RUNNING", "SENDING", "DONE"], order
    outputs = job["outputs"]
    assert isinstance(outputs, list) and len(outputs) == instances
    assert all(o["send_status"] == 0 for o in outputs)


@pytest.mark.skipif(
    orthanc_binary() is None, reason="Orthanc not installed (make test installs it)"
)
def test_storescu_series_comes_back_enhanced_in_orthanc(tmp_path: Path) -> None:
    sources = make_ct_series(tmp_path / "in", n_slices=12, rows=128, cols=128, noise_hu=20.0)
    with (
        OrthancPeer("ORTHANC") as orthanc,
        NodeProcess(
            tmp_path / "node", destination=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        ) as node,
    ):
        result = storescu(
            tmp_path / "in", node.port, "ENHANCE", calling_aet="CT_SCANNER", scan_dir=True
        )
        assert result.returncode == 0, result.stderr
        [job] = node.wait_until_finished(1)
        detail = node.job(job["id"])
        _assert_job_trail(detail, 12)
        assert detail["calling_ae_title"] == "CT_SCANNER" and detail["preset"] == "ct-denoise"
        instances = orthanc.wait_for_instances(
            detail["output_series_instance_uid"], 12, timeout_s=30
        )
        derived = [pydicom.dcmread(DicomBytesIO(orthanc.instance_file(i["ID"]))) for i in instances]
        # Only the derived series was sent to Orthanc.
        assert len(orthanc.series()) == 1
    assert_derived_series(derived, sources, preset="ct-denoise", work_dir=tmp_path)


def test_derived_series_reaches_a_pynetdicom_scp_and_rerun_is_deduplicated(tmp_path: Path) -> None:
    sources = make_ct_series(tmp_path / "in", n_slices=6, rows=64, cols=64, tilt_deg=15.0)
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(
            tmp_path / "node", destination=f"PACS@127.0.0.1:{pacs.port}", preset="gaussian"
        ) as node,
    ):
        assert storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True).returncode == 0
        [job] = node.wait_until_finished(1)
        _assert_job_trail(node.job(job["id"]), 6)
        derived = pacs.wait_for(6, timeout_s=30)
        assert set(pacs.calling_aets) == {"ENHANCE"}
        # Sending the same series again is recognised: no second job, no second series.
        assert storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True).returncode == 0
        assert len(node.wait_until_finished(1)) == 1
        text = node.cli("jobs", "list").stdout
        assert "DONE" in text and "gaussian" in text
    assert_derived_series(derived, sources, preset="gaussian", work_dir=tmp_path)


def _send(port: int, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="ENHANCE")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def test_bad_input_gets_clear_errors_and_the_node_keeps_serving(tmp_path: Path) -> None:
    truncated = truncate_pixel_data(make_ct_series(None, n_slices=1, rows=64, cols=64)[0])
    no_pixels = make_ct_series(None, n_slices=1, rows=64, cols=64)[0]
    del no_pixels.PixelData
    mixed = make_ct_series(None, n_slices=2, rows=64, cols=64)
    odd = make_ct_series(
        None, n_slices=1, rows=32, cols=32, study_uid=str(mixed[0].StudyInstanceUID),
        series_uid=str(mixed[0].SeriesInstanceUID),
    )[0]  # fmt: skip
    odd.ImagePositionPatient = [0.0, 0.0, 200.0]
    good = make_ct_series(None, n_slices=3, rows=64, cols=64)
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(tmp_path / "node", destination=f"PACS@127.0.0.1:{pacs.port}") as node,
    ):
        assert _send(node.port, [truncated, no_pixels]) == [0xC210, 0xA900]
        assert _send(node.port, [*mixed, odd]) == [0, 0, 0]
        jobs = node.wait_until_finished(1)
        [failed] = jobs
        assert failed["status"] == "FAILED" and failed["error_code"] == "invalid_series"
        assert "32 x 32 pixels differs from 64 x 64" in failed["error_message"]
        assert echoscu(node.port, "ENHANCE").returncode == 0
        assert _send(node.port, good) == [0, 0, 0]
        jobs = node.wait_until_finished(2)
        assert sorted(j["status"] for j in jobs) == ["DONE", "FAILED"]
        assert len(pacs.wait_for(3, timeout_s=30)) == 3
        assert node.running


def test_refused_send_is_retried_by_the_worker_then_done(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in", n_slices=3, rows=32, cols=32)
    with (
        CaptureSCP("PACS", store_status=0xA700, first_n=2) as pacs,
        NodeProcess(
            tmp_path / "node",
            destination=f"PACS@127.0.0.1:{pacs.port}",
            preset="identity",
            worker__retry_backoff_s="0.5",
        ) as node,
    ):
        assert storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True).returncode == 0
        [job] = node.wait_until_finished(1, timeout_s=60)
        detail = node.job(job["id"])
        assert detail["status"] == "DONE" and detail["attempts"] == 2
        messages = [e["message"] for e in detail["events"] if e["status"] == "QUEUED"]
        assert any("2 of 3 instances not stored" in m and "retry 2" in m for m in messages), (
            messages
        )
        assert all(o["send_status"] == 0 for o in detail["outputs"])
        assert any("reusing derived series" in e["message"] for e in detail["events"])
        # The retry sent only the two refused instances: 1 + 2 stores, three distinct UIDs.
        received = pacs.wait_for(3)
        assert len(received) == 3 and len({ds.SOPInstanceUID for ds in received}) == 3
        assert len(pacs.statuses) == 5


def test_unreachable_destination_fails_the_job_after_max_attempts(tmp_path: Path) -> None:
    from tests.integration.peers import free_port

    make_ct_series(tmp_path / "in", n_slices=2, rows=32, cols=32)
    with NodeProcess(
        tmp_path / "node",
        destination=f"PACS@127.0.0.1:{free_port()}",
        preset="identity",
        worker__max_attempts="2",
        worker__retry_backoff_s="0.5",
    ) as node:
        assert storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True).returncode == 0
        [job] = node.wait_until_finished(1, timeout_s=60)
        assert job["status"] == "FAILED" and job["attempts"] == 2
        assert job["error_code"] == "dispatch_error"
        assert "association with PACS@127.0.0.1" in job["error_message"]
        assert "after 2 attempts" in job["error_message"]
        echo = node.cli("echo", f"{node.ae_title}@127.0.0.1:{node.port}")
        assert "success" in echo.stdout
