"""Tests of the enhanceability decision made from headers."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    MediaStorageDirectoryStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pacs_node.dicom.classify import produced_by, series_skip_reason, skip_reason
from pacs_node.dicom.derived import build_derived_series
from tests.helpers.dicom_checks import extract_philips_study
from tests.helpers.synthetic import make_ct_series
from tests.pacs_node.dicom.test_derived import make_info


@pytest.fixture
def ct() -> Dataset:
    return make_ct_series(None, n_slices=1)[0]


def test_ct_mr_and_pet_are_enhanceable(ct: Dataset) -> None:
    assert skip_reason(ct) is None
    assert skip_reason(make_ct_series(None, n_slices=1, modality="MR")[0]) is None
    ct.SOPClassUID = PositronEmissionTomographyImageStorage
    assert skip_reason(ct) is None


def test_other_sop_class_is_named(ct: Dataset) -> None:
    ct.SOPClassUID = SecondaryCaptureImageStorage
    assert skip_reason(ct) == "Secondary Capture Image Storage is not an enhanceable image type"


def test_unknown_sop_class_is_named_by_uid(ct: Dataset) -> None:
    ct.SOPClassUID = "1.2.3.4.5"
    assert skip_reason(ct) == "SOP Class 1.2.3.4.5 is not an enhanceable image type"


@pytest.mark.parametrize("sop_class", [EnhancedCTImageStorage, EnhancedMRImageStorage])
def test_an_enhanced_header_without_functional_groups_is_skipped(
    ct: Dataset, sop_class: str
) -> None:
    ct.SOPClassUID = sop_class  # a single-frame header relabelled: no frame geometry
    assert (skip_reason(ct) or "").endswith("without functional groups")


def test_other_multiframe_classes_are_not_supported_yet(ct: Dataset) -> None:
    ct.SOPClassUID = EnhancedPETImageStorage
    assert skip_reason(ct) == "multi-frame Enhanced PET Image Storage is not supported yet"


def test_multiframe_ct_is_not_supported_yet(ct: Dataset) -> None:
    ct.NumberOfFrames = 4
    assert skip_reason(ct) == "multi-frame CT Image Storage (4 frames) is not supported yet"


def test_localizer_is_skipped(ct: Dataset) -> None:
    ct.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert skip_reason(ct) == "localizer (scout) images are not enhanced"


def test_color_is_skipped(ct: Dataset) -> None:
    ct.PhotometricInterpretation = "RGB"
    ct.SamplesPerPixel = 3
    reason = skip_reason(ct)
    assert reason is not None
    assert "RGB" in reason


def test_monochrome1_is_enhanceable(ct: Dataset) -> None:
    ct.PhotometricInterpretation = "MONOCHROME1"
    assert skip_reason(ct) is None


def test_two_samples_per_pixel_is_skipped(ct: Dataset) -> None:
    ct.SamplesPerPixel = 2
    assert skip_reason(ct) == "SamplesPerPixel 2 is not supported; only 1 sample per pixel"


def test_missing_geometry_is_skipped(ct: Dataset) -> None:
    del ct.ImagePositionPatient
    reason = skip_reason(ct)
    assert reason is not None
    assert "geometry" in reason


def test_dicomdir_is_named_from_file_meta() -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    assert skip_reason(ds) == "Media Storage Directory Storage is not an enhanceable image type"


def test_no_sop_class() -> None:
    assert skip_reason(Dataset()) == "instance has no SOP Class UID"


def test_series_reasons(ct: Dataset) -> None:
    series = make_ct_series(None, n_slices=3)
    assert series_skip_reason(series) is None
    assert series_skip_reason([]) == "series has no instances"

    series[1].SOPClassUID = SecondaryCaptureImageStorage
    reason = series_skip_reason(series)
    assert reason is not None
    assert reason.startswith("series mixes SOP classes")
    assert "CT Image Storage" in reason
    assert "Secondary Capture Image Storage" in reason

    series = make_ct_series(None, n_slices=3)
    series[2].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert series_skip_reason(series) == (
        "1 of 3 instances cannot be enhanced: localizer (scout) images are not enhanced"
    )

    series = make_ct_series(None, n_slices=2)
    series[0].SeriesInstanceUID = generate_uid()
    assert series_skip_reason(series) == "instances of 2 different series were mixed"

    localizers = make_ct_series(None, n_slices=2)
    for ds in localizers:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert series_skip_reason(localizers) == "localizer (scout) images are not enhanced"


def test_philips_study_mixed_content(tmp_path: Path) -> None:
    root = extract_philips_study(tmp_path)
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    reasons: set[str] = set()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "LICENSE"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        reason = skip_reason(header)
        if reason is not None:
            reasons.add(reason)
        by_series[str(header.get("SeriesInstanceUID", path.name))].append(header)

    enhanceable = {
        uid: headers for uid, headers in by_series.items() if series_skip_reason(headers) is None
    }
    # Only the two tilted axial series (54 and 58 slices) may be enhanced.
    assert sorted(len(h) for h in enhanceable.values()) == [54, 58]
    assert reasons == {
        "localizer (scout) images are not enhanced",
        "Secondary Capture Image Storage is not an enhanceable image type",
        "Media Storage Directory Storage is not an enhanceable image type",
    }


def test_own_derived_series_is_not_enhanced_again() -> None:
    sources = make_ct_series(None, n_slices=2, rows=16, cols=16)
    values = np.zeros((2, 16, 16), dtype=np.float32)
    derived = build_derived_series(sources, values, make_info(), datetime.now(UTC))
    assert produced_by(derived[0], "PACS Enhancement Node")
    assert not produced_by(derived[0], "Another Vendor")
    assert not produced_by(sources[0], "PACS Enhancement Node")
    reason = series_skip_reason(derived, own_manufacturer="PACS Enhancement Node")
    assert reason is not None and "not enhanced again" in reason
    assert series_skip_reason(derived, own_manufacturer="Another Vendor") is None
