"""A real CT series (Philips) as one Legacy Converted Enhanced CT instance, sent by
storescu, denoised and stored in Orthanc as one derived multi-frame instance of the same
SOP class that adds no dciodvfy error to its source."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacs_node.dicom.multiframe import load_frames
from tests.helpers.dicom_checks import philips_slices
from tests.helpers.enhanced import legacy_converted
from tests.integration.node import NodeProcess
from tests.integration.peers import OrthancPeer, dciodvfy, orthanc_binary, storescu

STUDY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct_study_philips.tar.xz"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not STUDY.exists(), reason=f"{STUDY} absent (CI always has ../shared)"),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
    pytest.mark.skipif(orthanc_binary() is None, reason="Orthanc not installed"),
]


def test_an_enhanced_ct_comes_back_as_an_enhanced_derived_object(tmp_path: Path) -> None:
    slices = [pydicom.dcmread(p) for p in philips_slices(tmp_path, 6)]
    (tmp_path / "in").mkdir()
    source_path = legacy_converted(slices, tmp_path / "in" / "enhanced.dcm")
    source = load_frames(source_path)
    with (
        OrthancPeer("PACS") as orthanc,
        NodeProcess(
            tmp_path / "node", preset="ct-denoise-fast",
            destination=f"PACS@127.0.0.1:{orthanc.dicom_port}",
        ) as node,
    ):  # fmt: skip
        result = storescu(tmp_path / "in", node.port, "ENHANCE", scan_dir=True, extra_args=("-R",))
        assert result.returncode == 0, result.stderr
        [job] = node.wait_until_finished(1, timeout_s=240)
        assert job["status"] == "DONE", node.job(job["id"])
        detail = node.job(job["id"])
        [item] = orthanc.wait_for_instances(detail["output_series_instance_uid"], 1)
        out = tmp_path / "derived.dcm"
        out.write_bytes(orthanc.instance_file(item["ID"]))
    derived = pydicom.dcmread(out)
    assert derived.SOPClassUID == source.dataset.SOPClassUID
    assert derived.NumberOfFrames == 6
    frames = derived.PerFrameFunctionalGroupsSequence
    assert [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber
            for f in frames] == [1, 2, 3, 4, 5, 6]  # fmt: skip
    after = load_frames(out)
    assert after.order == source.order
    change = np.abs(after.values - source.values)
    assert 0 < float(change.mean()) < 30  # denoised, anatomy's HU kept
    source_errors, _ = dciodvfy(source_path)
    derived_errors, _ = dciodvfy(out)
    assert set(derived_errors) <= set(source_errors), set(derived_errors) - set(source_errors)
