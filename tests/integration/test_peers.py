"""Integration tests of the real-peer helpers: Orthanc, CaptureSCP, storescu, echoscu, dciodvfy."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from tests.helpers.synthetic import make_ct_series
from tests.integration.peers import (
    CaptureSCP,
    OrthancPeer,
    dciodvfy,
    dicomweb_plugin,
    echoscu,
    orthanc_binary,
    storescu,
    storescu_errors,
)

pytestmark = pytest.mark.integration

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("echoscu") is None,
    reason="dcmtk storescu/echoscu not installed (apt install dcmtk)",
)
needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None,
    reason="dicom3tools dciodvfy not installed (apt install dicom3tools)",
)
needs_orthanc = pytest.mark.skipif(
    orthanc_binary() is None, reason="Orthanc not installed (apt install orthanc)"
)
needs_dicomweb = pytest.mark.skipif(
    dicomweb_plugin() is None,
    reason="Orthanc DICOMweb plugin not installed (apt install orthanc-dicomweb)",
)


def make_ct(series_uid: str | None = None, instance_number: int = 1) -> Dataset:
    """One small valid CT Image Storage instance (32x32) from the shared synthetic generator."""
    [ds] = make_ct_series(None, n_slices=1, rows=32, cols=32, series_uid=series_uid)
    ds.InstanceNumber = instance_number
    return ds


@pytest.fixture
def ct_file(tmp_path: Path) -> Path:
    path = tmp_path / "ct.dcm"
    make_ct().save_as(path, enforce_file_format=True)
    return path


def _read_strict(data: bytes) -> Dataset:
    with config.strict_reading():
        return dcmread(io.BytesIO(data))


@needs_dciodvfy
def test_dciodvfy_accepts_the_test_ct(ct_file: Path) -> None:
    errors, warnings = dciodvfy(ct_file)
    assert isinstance(warnings, list)
    assert errors == []


@needs_dciodvfy
def test_dciodvfy_reports_errors_of_a_broken_ct(tmp_path: Path) -> None:
    ds = make_ct()
    del ds.Rows  # Type 1 in Image Pixel (PS3.3 C.7.6.3)
    path = tmp_path / "broken.dcm"
    ds.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert any("Rows" in line for line in errors), errors


@needs_dcmtk
@needs_orthanc
@needs_dicomweb
def test_orthanc_receives_storescu(ct_file: Path) -> None:
    sent = dcmread(ct_file)
    with OrthancPeer("PACS", dicomweb=True) as pacs:
        echo = echoscu(pacs.dicom_port, pacs.aet)
        assert echo.returncode == 0, echo.stderr

        result = storescu(ct_file, pacs.dicom_port, pacs.aet, calling_aet="MODALITY")
        assert result.returncode == 0, result.stderr

        instances = pacs.wait_for_instances(sent.SeriesInstanceUID, count=1, timeout_s=15)
        assert len(instances) == 1
        series_id = pacs.find_series(sent.SeriesInstanceUID)
        assert series_id is not None
        assert [s["ID"] for s in pacs.series()] == [series_id]
        assert pacs.find_series(sent.StudyInstanceUID) is None  # a study, not a series

        received = _read_strict(pacs.instance_file(instances[0]["ID"]))
        assert received.SOPInstanceUID == sent.SOPInstanceUID
        assert np.array_equal(received.pixel_array, sent.pixel_array)

        # The DICOMweb plugin answers QIDO-RS under dicomweb_url.
        qido = pacs.client.get(
            f"{pacs.dicomweb_url}/series",
            params={"SeriesInstanceUID": sent.SeriesInstanceUID},
        )
        assert qido.status_code == 200, qido.text
        assert len(qido.json()) == 1


@needs_orthanc
def test_orthanc_wait_times_out_with_a_clear_message() -> None:
    with OrthancPeer() as pacs, pytest.raises(TimeoutError, match="0 of 1"):
        pacs.wait_for_instances("1.2.3.4", count=1, timeout_s=0.3)


@needs_dcmtk
def test_capture_scp_keeps_what_storescu_sends(tmp_path: Path) -> None:
    series_uid = _write_series(tmp_path, 3)
    with CaptureSCP("NODE") as scp:
        assert echoscu(scp.port, scp.aet).returncode == 0
        result = storescu(tmp_path, scp.port, scp.aet, calling_aet="MODALITY", scan_dir=True)
        assert result.returncode == 0, result.stderr
        datasets = scp.wait_for(3, timeout_s=10)
    assert sorted(int(ds.InstanceNumber) for ds in datasets) == [1, 2, 3]
    assert {ds.SeriesInstanceUID for ds in datasets} == {series_uid}
    assert scp.calling_aets == ["MODALITY"] * 3
    assert scp.statuses == [0x0000] * 3
    assert datasets[0].file_meta.MediaStorageSOPClassUID == CTImageStorage


def _write_series(folder: Path, count: int, name: str = "ct{}.dcm") -> str:
    series_uid = generate_uid()
    for number in range(1, count + 1):
        path = folder / name.format(number)
        make_ct(series_uid, number).save_as(path, enforce_file_format=True)
    return series_uid


@needs_dcmtk
def test_storescu_reports_a_failure_status(ct_file: Path) -> None:
    with CaptureSCP(store_status=0xA700) as scp:
        result = storescu(ct_file, scp.port, scp.aet)
        assert scp.statuses == [0xA700]
        assert scp.datasets == []
    # storescu exits with the high byte of the failing status (0xA7).
    assert result.returncode == 0xA7, result.stderr
    assert "Received Store Response (Refused: OutOfResources)" in result.stderr


@needs_dcmtk
def test_failure_for_first_n_then_success(tmp_path: Path) -> None:
    _write_series(tmp_path, 3)
    with CaptureSCP(store_status=0xA700, first_n=1) as scp:
        result = storescu(tmp_path, scp.port, scp.aet, scan_dir=True, extra_args=["-nh"])
        datasets = scp.wait_for(2, timeout_s=10)
        assert scp.statuses == [0xA700, 0x0000, 0x0000]
    assert len(datasets) == 2
    # With --no-halt storescu exits 0 although a store failed: only the log tells.
    assert result.returncode == 0
    assert result.stderr.count("Received Store Response (Refused: OutOfResources)") == 1
    assert result.stderr.count("Received Store Response (Success)") == 2


@needs_dcmtk
def test_refused_association(ct_file: Path) -> None:
    with CaptureSCP(refuse_associations=True) as scp:
        result = storescu(ct_file, scp.port, scp.aet)
        assert echoscu(scp.port, scp.aet).returncode != 0
        assert scp.statuses == []
    assert result.returncode == 1
    assert "F: Association Rejected:" in storescu_errors(result)


@needs_dcmtk
def test_storescu_with_a_dicomdir_in_the_folder(tmp_path: Path) -> None:
    """A DICOMDIR is not a storage object: storescu needs -nh to get past it."""
    if shutil.which("dcmmkdir") is None:
        pytest.skip("dcmtk dcmmkdir not installed")
    folder = tmp_path / "media"
    (folder / "SERIES").mkdir(parents=True)
    # DICOM media file IDs: up to 8 upper-case characters, digits or "_" (PS3.10 8.2).
    _write_series(folder / "SERIES", 2, name="IM{}")
    made = subprocess.run(
        ["dcmmkdir", "+r", "+id", str(folder), "+D", str(folder / "DICOMDIR"), "-Pgp", "SERIES"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr

    # -R -nh: files are checked before the association and the DICOMDIR is skipped.
    with CaptureSCP() as scp:
        result = storescu(folder, scp.port, scp.aet, scan_dir=True, extra_args=["-R", "-nh"])
        assert scp.statuses == [0x0000, 0x0000]
    assert result.returncode == 0, result.stderr
    assert "DICOMDIR, ignoring file" in result.stderr

    # -R with the default --halt: the DICOMDIR is fatal before any association.
    with CaptureSCP() as scp:
        result = storescu(folder, scp.port, scp.aet, scan_dir=True, extra_args=["-R"])
        assert scp.statuses == []
    assert result.returncode == 1
    assert any("missing SOP class" in line for line in storescu_errors(result))

    with CaptureSCP() as scp:
        result = storescu(folder, scp.port, scp.aet, scan_dir=True, extra_args=["-nh"])
        assert scp.statuses == [0x0000, 0x0000]
    assert result.returncode == 0  # --no-halt: the failure is only in the log
    assert any("No SOP Class or Instance UID" in line for line in storescu_errors(result))


@needs_orthanc
def test_orthanc_start_failure_shows_the_log(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        peer = OrthancPeer(startup_timeout_s=20, extra_config={"DicomPort": port})
        with pytest.raises(RuntimeError, match="log tail"):
            peer.start()
    peer.stop()  # idempotent after a failed start


@needs_orthanc
def test_orthanc_process_is_gone_after_stop() -> None:
    with OrthancPeer() as pacs:
        process = pacs._process
        assert process is not None
        pid = process.pid
    assert process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
