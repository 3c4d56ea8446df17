"""Assertions on a derived series as a radiologist's PACS receives it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from tests.integration.peers import dciodvfy

PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
)  # fmt: skip
GEOMETRY = (
    "FrameOfReferenceUID", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "SliceThickness", "Rows", "Columns", "WindowCenter", "WindowWidth",
)  # fmt: skip


def modality_values(ds: Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def assert_derived_series(
    derived: list[Dataset], sources: list[Dataset], *, preset: str, work_dir: Path
) -> None:
    """Every provenance, geometry and pixel-module promise of the derived series."""
    assert len(derived) == len(sources)
    by_uid = {str(s.SOPInstanceUID): s for s in sources}
    series_uids = {str(d.SeriesInstanceUID) for d in derived}
    assert len(series_uids) == 1
    [series_uid] = series_uids
    source_series = str(sources[0].SeriesInstanceUID)
    assert series_uid != source_series
    numbers = {int(d.SeriesNumber) for d in derived}
    assert len(numbers) == 1 and numbers != {int(sources[0].SeriesNumber)}
    for index, ds in enumerate(derived):
        [ref] = ds.SourceImageSequence
        source = by_uid.pop(str(ref.ReferencedSOPInstanceUID))
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        [purpose] = ref.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
        assert purpose.CodeMeaning == "Source image for image processing operation"
        for keyword in PATIENT_STUDY:
            assert ds.get(keyword) == source.get(keyword), keyword
        for keyword in GEOMETRY:
            assert ds.get(keyword) == source.get(keyword), keyword
        assert ds.SOPClassUID == source.SOPClassUID
        assert ds.SOPInstanceUID != source.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.ImageType[0] == "DERIVED"
        assert preset in ds.SeriesDescription
        assert ds.DerivationDescription and preset in ds.DerivationDescription
        assert len(ds.DerivationCodeSequence) == 1
        [related] = ds.RelatedSeriesSequence
        assert related.SeriesInstanceUID == source_series
        assert related.StudyInstanceUID == source.StudyInstanceUID
        [equipment] = ds.ContributingEquipmentSequence
        assert equipment.Manufacturer and equipment.ManufacturerModelName
        assert equipment.SoftwareVersions and str(equipment.DeviceUID).startswith("2.25.")
        assert ds.InstanceCreationDate and ds.ContentDate and ds.ContentTime
        assert ds.BitsAllocated == 16 and ds.BitsStored <= 16
        assert ds.HighBit == ds.BitsStored - 1
        assert ds.PixelRepresentation in (0, 1)
        assert not any(elem.tag.is_private for elem in ds)
        hu, src_hu = modality_values(ds), modality_values(source)
        assert hu.shape == src_hu.shape
        # Enhancement must not shift tissue values: the mean HU over the slice stays put,
        # and values stay near the range the source spans (a denoiser may overshoot an
        # edge slightly, never invent a new intensity range).
        assert abs(float(hu.mean()) - float(src_hu.mean())) < 5.0
        assert hu.min() >= src_hu.min() - 50 and hu.max() <= src_hu.max() + 50
        if index < 3:
            path = work_dir / f"derived-{index}.dcm"
            ds.save_as(path, enforce_file_format=True)
            errors, _warnings = dciodvfy(path)
            assert errors == [], errors
    assert by_uid == {}, "some sources have no derived instance"
