"""Real CT slices (the Philips study) compressed by independent encoders (dcmtk's, and
OpenJPEG for JPEG 2000), sent by dcmtk's storescu in that transfer syntax, enhanced by the
node and stored in Orthanc: the lossless syntaxes give exactly the original HU."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import JPEG2000Lossless, generate_uid

from tests.helpers.dicom_checks import philips_slices
from tests.integration.checks import modality_values
from tests.integration.node import NodeProcess
from tests.integration.peers import OrthancPeer, orthanc_binary, storescu

STUDY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct_study_philips.tar.xz"
SLICES = 4

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not STUDY.exists(), reason=f"{STUDY} absent (CI always has ../shared)"),
    pytest.mark.skipif(shutil.which("dcmcjpls") is None, reason="dcmtk not installed"),
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed"),
]

# name: (how the copy is made, storescu's proposal, the transfer syntax stored)
SYNTAXES = {
    "j2k": ("openjpeg", "-xv", "1.2.840.10008.1.2.4.90"),
    "jpeg-ls": ("dcmcjpls", "-xt", "1.2.840.10008.1.2.4.80"),
    "jpeg-lossless": ("dcmcjpeg", "-xs", "1.2.840.10008.1.2.4.70"),
    "rle": ("dcmcrle", "-xr", "1.2.840.10008.1.2.5"),
    "deflated": ("dcmconv +td", "-xd", "1.2.840.10008.1.2.1.99"),
}


def _originals(tmp_path: Path) -> list[Path]:
    """SLICES consecutive axial slices of one real series, uncompressed."""
    return philips_slices(tmp_path, SLICES)


def _copy_uid(uid: str, series: int) -> str:
    return str(generate_uid(entropy_srcs=[uid, str(series)]))


def _compress(tool: str, source: Path, target: Path, series: int) -> None:
    """Copy ``source`` as a new series (its own UIDs) compressed by ``tool``."""
    ds = pydicom.dcmread(source)
    ds.SeriesInstanceUID = _copy_uid(ds.SeriesInstanceUID, series)
    ds.SOPInstanceUID = _copy_uid(ds.SOPInstanceUID, series)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = 9000 + series
    plain = target.with_suffix(".plain")
    ds.save_as(plain, enforce_file_format=True)
    if tool == "openjpeg":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        ds.save_as(target, enforce_file_format=True)
    else:
        subprocess.run([*tool.split(), str(plain), str(target)], check=True, capture_output=True)
    plain.unlink()


def test_lossless_compressed_series_come_back_enhanced_with_the_original_hu(
    tmp_path: Path,
) -> None:
    originals = _originals(tmp_path / "study")
    reference = {}  # SOP Instance UID of each copy: the original's HU
    for path in originals:
        ds = pydicom.dcmread(path)
        for number in range(1, len(SYNTAXES) + 1):
            reference[_copy_uid(ds.SOPInstanceUID, number)] = modality_values(ds)
    folders = {}
    for number, (name, (tool, _, syntax)) in enumerate(SYNTAXES.items(), start=1):
        folder = tmp_path / name
        folder.mkdir()
        for index, path in enumerate(originals):
            _compress(tool, path, folder / f"{index}.dcm", number)
        assert pydicom.dcmread(folder / "0.dcm").file_meta.TransferSyntaxUID == syntax
        folders[name] = folder
    with (
        OrthancPeer("PACS") as orthanc,
        NodeProcess(
            tmp_path / "node", preset="identity",
            destination=f"PACS@127.0.0.1:{orthanc.dicom_port}",
        ) as node,
    ):  # fmt: skip
        for name, (_, option, _) in SYNTAXES.items():
            # -R: propose only the SOP class of the files, in the proposed syntax.
            result = storescu(folders[name], node.port, "ENHANCE", scan_dir=True,
                              extra_args=(option, "-R"))  # fmt: skip
            assert result.returncode == 0, (name, result.stderr)
        jobs = node.wait_until_finished(len(SYNTAXES), timeout_s=180)
        assert [j["status"] for j in jobs] == ["DONE"] * len(SYNTAXES), jobs
        for job in jobs:
            detail = node.job(job["id"])
            # The node kept what it received, in the syntax it arrived in.
            received = {
                pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
                for p in (node.data_dir / "received").rglob("*.dcm")
            }
            assert received == {s for _, _, s in SYNTAXES.values()}
            instances = orthanc.wait_for_instances(detail["output_series_instance_uid"], SLICES)
            for item in instances:
                derived = pydicom.dcmread(DicomBytesIO(orthanc.instance_file(item["ID"])))
                source_uid = str(derived.SourceImageSequence[0].ReferencedSOPInstanceUID)
                np.testing.assert_array_equal(modality_values(derived), reference[source_uid])
                assert "LossyImageCompression" not in derived
        node.assert_invariants()


def test_a_jpeg_2000_series_sent_with_storescu_xv_comes_back_denoised(tmp_path: Path) -> None:
    originals = _originals(tmp_path / "study")
    folder = tmp_path / "j2k"
    folder.mkdir()
    for index, path in enumerate(originals):
        _compress("openjpeg", path, folder / f"{index}.dcm", 1)
    with (
        OrthancPeer("PACS") as orthanc,
        NodeProcess(
            tmp_path / "node", preset="ct-denoise-fast",
            destination=f"PACS@127.0.0.1:{orthanc.dicom_port}",
        ) as node,
    ):  # fmt: skip
        result = storescu(folder, node.port, "ENHANCE", scan_dir=True, extra_args=("-xv", "-R"))
        assert result.returncode == 0, result.stderr
        [job] = node.wait_until_finished(1, timeout_s=180)
        assert job["status"] == "DONE", node.job(job["id"])
        detail = node.job(job["id"])
        [item, *_] = orthanc.wait_for_instances(detail["output_series_instance_uid"], SLICES)
        derived = pydicom.dcmread(DicomBytesIO(orthanc.instance_file(item["ID"])))
        source_uid = str(derived.SourceImageSequence[0].ReferencedSOPInstanceUID)
        source = next(
            pydicom.dcmread(p) for p in folder.iterdir()
            if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == source_uid
        )  # fmt: skip
        before, after = modality_values(source), modality_values(derived)
        assert derived.ContributingEquipmentSequence[-1].ContributionDescription.startswith(
            "ct-denoise"
        )
        assert not np.array_equal(before, after)  # the model changed the pixels
        assert np.abs(after - before).mean() < 30  # and kept the anatomy's HU
