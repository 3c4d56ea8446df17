"""A real scanner study (Philips, tilted gantry, with a localizer, secondary captures and
DICOMDIR files) sent whole with `storescu +sd`: only the axial CT series are enhanced."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from tests.integration.checks import modality_values
from tests.integration.node import NodeProcess
from tests.integration.peers import OrthancPeer, dciodvfy, orthanc_binary, storescu

STUDY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct_study_philips.tar.xz"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not STUDY.exists(), reason=f"{STUDY} absent (CI always has ../shared)"),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed"),
]


def test_whole_philips_study_only_axial_ct_is_enhanced(tmp_path: Path) -> None:
    with tarfile.open(STUDY) as archive:
        archive.extractall(tmp_path, filter="data")
    study = tmp_path / "ct_study_philips"
    sources = {}
    for path in study.rglob("I*"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sources[str(ds.SOPInstanceUID)] = ds
    with (
        OrthancPeer("PACS") as orthanc,
        NodeProcess(tmp_path / "node", destination=f"PACS@127.0.0.1:{orthanc.dicom_port}") as node,
    ):
        # -nh: go on after files storescu cannot send itself (DICOMDIR, the licence text).
        result = storescu(study, node.port, "ENHANCE", scan_dir=True, extra_args=("-nh",))
        assert "Received Store Response (Success)" in result.stderr
        jobs = node.wait_until_finished(4, timeout_s=240)
        assert node.running
        by_number = {j["series_number"]: j for j in jobs}
        assert sorted(by_number) == [100, 201, 301, 401]
        assert by_number[201]["status"] == "DONE" and by_number[201]["instance_count"] == 54
        assert by_number[301]["status"] == "DONE" and by_number[301]["instance_count"] == 58
        assert by_number[100]["status"] == "SKIPPED"
        assert "localizer" in by_number[100]["error_message"]
        assert by_number[401]["status"] == "SKIPPED"
        assert "Secondary Capture" in by_number[401]["error_message"]
        for number in (201, 301):
            job = node.job(by_number[number]["id"])
            instances = orthanc.wait_for_instances(
                job["output_series_instance_uid"], job["instance_count"]
            )
            assert len(instances) == job["instance_count"]
            sample = pydicom.dcmread(DicomBytesIO(orthanc.instance_file(instances[0]["ID"])))
            assert sample.ImageType[0] == "DERIVED" and sample.Rows == 512
            source_uid = sample.SourceImageSequence[0].ReferencedSOPInstanceUID
            source = sources[source_uid]
            for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                            "FrameOfReferenceUID", "GantryDetectorTilt", "PatientID"):  # fmt: skip
                assert sample.get(keyword) == source.get(keyword), keyword
            hu = modality_values(sample)
            assert hu.min() >= -1100 and hu.max() <= 3100
            path = tmp_path / f"derived-{number}.dcm"
            path.write_bytes(orthanc.instance_file(instances[0]["ID"]))
            errors, _ = dciodvfy(path)
            assert errors == [], errors
        # Only the two derived series went to the PACS.
        assert len(orthanc.series()) == 2
