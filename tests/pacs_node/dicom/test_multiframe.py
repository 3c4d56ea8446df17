"""Enhanced and Legacy Converted Enhanced CT/MR: frames read as one volume, and the derived
object built in the same SOP class with its provenance per frame. Inputs are made with
highdicom's legacy conversion from single-frame series (synthetic and the real Philips CT)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacs_node.dicom.classify import series_skip_reason, skip_reason
from pacs_node.dicom.derived_multiframe import build_derived_multiframe
from pacs_node.dicom.multiframe import load_frames
from pacs_node.errors import InvalidSeriesError
from tests.helpers.enhanced import legacy_converted
from tests.helpers.synthetic import make_ct_series
from tests.integration.peers import dciodvfy
from tests.pacs_node.dicom.test_derived import NOW, make_info


def _hu(ds: Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_frames_are_read_as_one_volume_sorted_along_the_normal(
    tmp_path: Path, modality: str
) -> None:
    slices = make_ct_series(None, n_slices=6, rows=32, cols=32, modality=modality, seed=3)
    path = legacy_converted(slices, tmp_path / "lce.dcm")
    # Frames in no particular order, as a scanner may write them: permute frames and their
    # functional groups together.
    ds = pydicom.dcmread(path)
    permutation = [3, 0, 5, 1, 4, 2]
    frames = ds.pixel_array.reshape(6, 32, 32)
    ds.PixelData = np.ascontiguousarray(frames[permutation]).tobytes()
    items = list(ds.PerFrameFunctionalGroupsSequence)
    ds.PerFrameFunctionalGroupsSequence = [items[i] for i in permutation]
    ds.save_as(path, enforce_file_format=True)
    stack = load_frames(path)
    by_position = sorted(slices, key=lambda s: float(s.ImagePositionPatient[2]))
    np.testing.assert_allclose(stack.values, np.stack([_hu(s) for s in by_position]), atol=1e-3)
    heights = [float(ds.PerFrameFunctionalGroupsSequence[i].PlanePositionSequence[0]
                     .ImagePositionPatient[2]) for i in stack.order]  # fmt: skip
    assert heights == sorted(heights) and stack.order != sorted(stack.order)
    assert stack.spacing_mm[1:] == tuple(float(v) for v in slices[0].PixelSpacing)


def test_frames_of_two_stacks_are_refused(tmp_path: Path) -> None:
    slices = make_ct_series(None, n_slices=3, rows=16, cols=16)
    again = make_ct_series(None, n_slices=3, rows=16, cols=16, seed=5)
    for ds, twin in zip(again, slices, strict=True):  # a second time point, same positions
        ds.ImagePositionPatient = twin.ImagePositionPatient
        ds.SeriesInstanceUID, ds.StudyInstanceUID = twin.SeriesInstanceUID, twin.StudyInstanceUID
        ds.FrameOfReferenceUID = twin.FrameOfReferenceUID
    path = legacy_converted(slices + again, tmp_path / "two.dcm")
    with pytest.raises(InvalidSeriesError, match="same position"):
        load_frames(path)


def test_which_multiframe_instances_are_enhanced(tmp_path: Path, transfer_syntax_dir: Path) -> None:
    path = legacy_converted(make_ct_series(None, n_slices=3, rows=16, cols=16), tmp_path / "a")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert skip_reason(header) is None
    assert "multi-frame instances" in (series_skip_reason([header, header]) or "")
    perfusion = pydicom.dcmread(
        transfer_syntax_dir / "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm",
        stop_before_pixels=True,
    )
    assert "parametric map" in (skip_reason(perfusion) or "")


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_the_derived_object_keeps_sop_class_frames_hu_and_provenance(
    tmp_path: Path, modality: str
) -> None:
    slices = make_ct_series(None, n_slices=5, rows=32, cols=32, modality=modality, seed=7)
    path = legacy_converted(slices, tmp_path / "source.dcm")
    stack = load_frames(path)
    in_frame_order = np.empty_like(stack.values)
    in_frame_order[stack.order] = stack.values
    derived = build_derived_multiframe(stack.dataset, in_frame_order, make_info(), NOW)
    out = tmp_path / "derived.dcm"
    derived.save_as(out, enforce_file_format=True)
    back = pydicom.dcmread(out)
    source = stack.dataset
    assert back.SOPClassUID == source.SOPClassUID and back.NumberOfFrames == 5
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.ImageType[0] == "DERIVED"
    np.testing.assert_array_equal(load_frames(out).values, stack.values)  # identity: same HU
    for index, item in enumerate(back.PerFrameFunctionalGroupsSequence):
        [derivation] = item.DerivationImageSequence
        [reference] = derivation.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedFrameNumber == index + 1
        assert derivation.DerivationCodeSequence[0].CodeValue == make_info().derivation_code[0]
        # Geometry untouched, frame by frame.
        assert (item.PlanePositionSequence[0].ImagePositionPatient
                == source.PerFrameFunctionalGroupsSequence[index].PlanePositionSequence[0]
                .ImagePositionPatient)  # fmt: skip
    evidence = back.SourceImageEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    equipment = back.ContributingEquipmentSequence[-1]
    assert equipment.Manufacturer == make_info().manufacturer


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_the_derived_object_adds_no_dciodvfy_error_to_its_source(tmp_path: Path) -> None:
    slices = make_ct_series(None, n_slices=4, rows=32, cols=32, seed=9)
    path = legacy_converted(slices, tmp_path / "source.dcm")
    stack = load_frames(path)
    values = np.empty_like(stack.values)
    values[stack.order] = stack.values + 3.0  # a change the model might make
    out = tmp_path / "derived.dcm"
    build_derived_multiframe(stack.dataset, values, make_info(), NOW).save_as(
        out, enforce_file_format=True
    )
    source_errors, _ = dciodvfy(path)
    derived_errors, _ = dciodvfy(out)
    assert set(derived_errors) <= set(source_errors), set(derived_errors) - set(source_errors)
