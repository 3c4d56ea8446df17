"""Tests of the derived-series builder: content, pixels, round trip and IOD validity."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset
from pydicom.sr.codedict import Collection, codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_node.dicom.derived import (
    SMOOTHING,
    DerivationInfo,
    build_derived_series,
    choose_series_number,
)
from pacs_node.dicom.uids import derived_series_uid, derived_sop_uid, device_uid
from pacs_node.dicom.volume import load_series
from tests.helpers.dicom_checks import (
    dciodvfy_errors,
    extract_philips_study,
    roundtrip,
    strict_validation,
)
from tests.helpers.synthetic import file_path, make_ct_series

NOW = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
)
KEPT_KEYWORDS = (
    "SOPClassUID",
    "Modality",
    "FrameOfReferenceUID",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "SliceThickness",
    "WindowCenter",
    "WindowWidth",
    "RescaleIntercept",
    "RescaleSlope",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "InstanceNumber",
)


def make_info(**changes: Any) -> DerivationInfo:
    fields: dict[str, Any] = {
        "preset": "ct-denoise",
        "model_name": "unet-ct",
        "model_version": "1.2.0",
        "weights_sha256": "0123456789abcdef" * 4,
        "description": "Noise reduced by a convolutional network (unet-ct 1.2.0)",
        "derivation_code": SMOOTHING,
        "series_description_template": "{source} [{preset}]",
        "series_number": 1003,
        "manufacturer": "PACS Enhancement Node",
        "equipment_model_name": "pacs-node",
        "software_versions": "0.1.0",
    }
    fields.update(changes)
    return DerivationInfo(**fields)


def build(
    sources: list[FileDataset], values: np.ndarray | None = None, **info_changes: Any
) -> list[FileDataset]:
    """Build in strict mode (pydicom raises on any invalid value assigned)."""
    if values is None:
        values = hu(sources)
    with strict_validation():
        return build_derived_series(sources, values, make_info(**info_changes), NOW)


def hu(sources: list[FileDataset]) -> np.ndarray:
    return np.stack(
        [
            ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
            for ds in sources
        ]
    ).astype(np.float32)


def stored_of(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.pixel_array)


@pytest.fixture
def sources() -> list[FileDataset]:
    return make_ct_series(None, n_slices=4, rows=32, cols=40, add_icon=True)


# ---- identity, round trip and validity ----


def test_roundtrip_with_strict_validation(sources: list[FileDataset]) -> None:
    derived = build(sources)
    assert len(derived) == len(sources)
    for out, src in zip(derived, sources, strict=True):
        back = roundtrip(out)
        assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert back.file_meta.MediaStorageSOPClassUID == back.SOPClassUID == src.SOPClassUID
        assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
        np.testing.assert_array_equal(back.pixel_array, src.pixel_array)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"pixel_representation": 0, "bits_stored": 12, "tilt_deg": 18.5},
        {"pixel_padding_value": -2000, "add_icon": True},
        {"pixel_representation": 0, "pixel_padding_value": 0},
        {"modality": "MR", "pixel_representation": 0},
    ],
)
def test_output_passes_dciodvfy(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    sources = make_ct_series(tmp_path / "src", n_slices=3, **kwargs)
    for src in sources:
        assert dciodvfy_errors(file_path(src)) == [], "source must be valid to start with"
    derived = build(sources, hu(sources) * 0.9)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for k, ds in enumerate(derived):
        path = out_dir / f"{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pixel_representation": 1, "bits_stored": 16},
        {"pixel_representation": 0, "bits_stored": 12},
        {"pixel_representation": 0, "bits_stored": 16},
        {"pixel_representation": 1, "pixel_padding_value": -2000},
        {"pixel_representation": 0, "pixel_padding_value": 0},
        {"modality": "MR", "pixel_representation": 0},
    ],
)
def test_identity_values_give_identical_pixel_bytes(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    series = make_ct_series(tmp_path, n_slices=3, **kwargs)
    volume = load_series([file_path(ds) for ds in series])
    derived = build(volume.datasets, volume.values)  # type: ignore[arg-type]
    for out, src in zip(derived, volume.datasets, strict=True):
        assert bytes(out.PixelData) == bytes(src.PixelData)


# ---- attributes ----


def test_patient_and_study_unchanged(sources: list[FileDataset]) -> None:
    for out, src in zip(build(sources), sources, strict=True):
        back = roundtrip(out)
        for keyword in PATIENT_STUDY_KEYWORDS:
            assert back[keyword].value == src[keyword].value, keyword


def test_geometry_and_display_kept(sources: list[FileDataset]) -> None:
    for out, src in zip(build(sources), sources, strict=True):
        back = roundtrip(out)
        for keyword in KEPT_KEYWORDS:
            assert back[keyword].value == src[keyword].value, keyword


def test_new_deterministic_uids(sources: list[FileDataset]) -> None:
    first = build(sources)
    second = build(sources)
    series_uid = derived_series_uid(
        sources[0].SeriesInstanceUID,
        [str(src.SOPInstanceUID) for src in sources],
        "ct-denoise",
        "1",
        "1.2.0",
        "0123456789abcdef" * 4,
    )
    assert {ds.SeriesInstanceUID for ds in first} == {series_uid}
    assert series_uid != sources[0].SeriesInstanceUID
    for out, again, src in zip(first, second, sources, strict=True):
        assert out.SOPInstanceUID == derived_sop_uid(series_uid, src.SOPInstanceUID)
        assert out.SOPInstanceUID == again.SOPInstanceUID
        assert out.SOPInstanceUID != src.SOPInstanceUID
    # Anything that can change the pixels gives new UIDs: the preset, the strength, the
    # weights, the set of inputs.
    for other in (
        build(sources, preset="ct-sharp"),
        build(sources, strength=0.75),
        build(sources, weights_sha256="f" * 64),
        build(sources[:-1]),
    ):
        assert other[0].SeriesInstanceUID != series_uid
        assert other[0].SOPInstanceUID != first[0].SOPInstanceUID


def test_a_blended_series_names_its_strength(sources: list[FileDataset]) -> None:
    item = build(sources, strength=0.75)[0].ContributingEquipmentSequence[-1]
    assert item.ContributionDescription.endswith("preset ct-denoise, strength 75%")
    assert (
        "strength"
        not in build(sources)[0].ContributingEquipmentSequence[-1].ContributionDescription
    )


def test_image_type_derived_secondary(sources: list[FileDataset]) -> None:
    assert list(sources[0].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    for out in build(sources):
        assert list(roundtrip(out).ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]


def test_series_number_and_description(sources: list[FileDataset]) -> None:
    out = roundtrip(build(sources)[0])
    assert out.SeriesNumber == 1003
    assert out.SeriesDescription == "Synthetic phantom [ct-denoise]"


def test_series_description_is_truncated_and_sanitised() -> None:
    sources = make_ct_series(None, n_slices=1, series_description="A\\B " + "x" * 55)
    out = roundtrip(build(sources, series_description_template="{model} {version}: {source}")[0])
    assert out.SeriesDescription.startswith("unet-ct 1.2.0: A/B xxx")
    assert len(out.SeriesDescription) == 64


def test_derivation_description_and_code(sources: list[FileDataset]) -> None:
    out = roundtrip(build(sources)[0])
    assert out.DerivationDescription == make_info().description
    (code,) = out.DerivationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "113087",
        "DCM",
        "Smoothing",
    )


def test_source_image_sequence(sources: list[FileDataset]) -> None:
    for out, src in zip(build(sources), sources, strict=True):
        (item,) = roundtrip(out).SourceImageSequence
        assert item.ReferencedSOPClassUID == src.SOPClassUID
        assert item.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert item.SpatialLocationsPreserved == "YES"
        (purpose,) = item.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "121322",
            "DCM",
            "Source image for image processing operation",
        )


def test_related_series_links_the_source_series(sources: list[FileDataset]) -> None:
    (item,) = roundtrip(build(sources)[0]).RelatedSeriesSequence
    assert item.StudyInstanceUID == sources[0].StudyInstanceUID
    assert item.SeriesInstanceUID == sources[0].SeriesInstanceUID
    (purpose,) = item.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "121323",
        "DCM",
        "Source series for image processing operation",
    )
    # The code belongs to CID 7210 Related Series Purposes of Reference.
    cid7210 = {c.value for c in Collection("CID7210").concepts.values()}
    assert purpose.CodeValue in cid7210


def test_contributing_equipment(sources: list[FileDataset]) -> None:
    purpose = Dataset()
    purpose.CodeValue = codes.DCM.DeIdentifyingEquipment.value
    purpose.CodingSchemeDesignator = "DCM"
    purpose.CodeMeaning = codes.DCM.DeIdentifyingEquipment.meaning
    previous = Dataset()
    previous.Manufacturer = "Anonymizer Inc"
    previous.PurposeOfReferenceCodeSequence = [purpose]
    sources[0].ContributingEquipmentSequence = [previous]
    derived = build(sources)

    kept, ours = roundtrip(derived[0]).ContributingEquipmentSequence
    assert kept.Manufacturer == "Anonymizer Inc"
    (only,) = roundtrip(derived[1]).ContributingEquipmentSequence
    assert only == ours
    info = make_info()
    assert ours.Manufacturer == info.manufacturer
    assert ours.ManufacturerModelName == info.equipment_model_name
    assert ours.SoftwareVersions == info.software_versions
    assert ours.DeviceUID == device_uid(info.model_name, info.model_version, info.weights_sha256)
    assert ours.ContributionDateTime == "20240506070809.123456+0200"
    assert "unet-ct 1.2.0" in ours.ContributionDescription
    (purpose,) = ours.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "109102",
        "DCM",
        "Processing Equipment",
    )


def test_creation_and_content_dates_are_now(sources: list[FileDataset]) -> None:
    out = roundtrip(build(sources)[0])
    assert (out.InstanceCreationDate, out.InstanceCreationTime) == ("20240506", "070809.123456")
    assert (out.ContentDate, out.ContentTime) == ("20240506", "070809.123456")
    # Acquisition is unchanged: the same photons.
    assert out.AcquisitionDate == sources[0].AcquisitionDate


def test_private_tags_icon_and_pixel_statistics_removed(sources: list[FileDataset]) -> None:
    assert any(elem.tag.is_private for elem in sources[0])
    assert "IconImageSequence" in sources[0]
    sources[0].ReferencedImageSequence = [Dataset()]
    item = sources[0].ReferencedImageSequence[0]
    item.ReferencedSOPClassUID = sources[0].SOPClassUID
    item.ReferencedSOPInstanceUID = generate_uid()
    item.private_block(0x0029, "NESTED VENDOR", create=True).add_new(0x01, "LO", "x")

    out = roundtrip(build(sources)[0])
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert "ReferencedImageSequence" in out
    for keyword in ("IconImageSequence", "SmallestImagePixelValue", "LargestImagePixelValue"):
        assert keyword not in out


def test_pixel_module_16_bits(sources: list[FileDataset]) -> None:
    out = roundtrip(build(sources)[0])
    assert (out.BitsAllocated, out.BitsStored, out.HighBit) == (16, 16, 15)
    assert out.SamplesPerPixel == 1
    assert out["PixelData"].VR == "OW"


# ---- pixel values ----


def test_hounsfield_units_preserved(sources: list[FileDataset]) -> None:
    values = hu(sources) - 37.3
    for k, out in enumerate(build(sources, values)):
        back = roundtrip(out)
        decoded = back.pixel_array * float(back.RescaleSlope) + float(back.RescaleIntercept)
        np.testing.assert_allclose(decoded, values[k], atol=0.5)


def test_non_unit_slope_is_respected() -> None:
    sources = make_ct_series(None, n_slices=2, pixel_representation=1)
    for ds in sources:
        ds.RescaleSlope = 0.5
        ds.RescaleIntercept = -1000
    values = hu(sources) + 10.1
    for k, out in enumerate(build(sources, values)):
        stored = stored_of(out).astype(np.float64)
        np.testing.assert_allclose(stored * 0.5 - 1000, values[k], atol=0.25)


@pytest.mark.parametrize(
    ("pixel_representation", "low", "high"), [(1, -32768, 32767), (0, 0, 65535)]
)
def test_values_are_clipped_to_the_stored_range(
    pixel_representation: int, low: int, high: int
) -> None:
    sources = make_ct_series(None, n_slices=1, pixel_representation=pixel_representation)
    values = hu(sources)
    values[0, 0, :5] = 1e9
    values[0, 1, :5] = -1e9
    stored = stored_of(build(sources, values)[0])
    assert (stored[0, :5] == high).all()
    assert (stored[1, :5] == low).all()


@pytest.mark.parametrize(("pixel_representation", "padding"), [(1, -2000), (0, 0)])
def test_padding_stays_padding(pixel_representation: int, padding: int) -> None:
    sources = make_ct_series(
        None, n_slices=2, pixel_representation=pixel_representation, pixel_padding_value=padding
    )
    is_padding = sources[0].pixel_array == padding
    assert is_padding.any()
    values = hu(sources) + 500.0  # would move padding pixels away from the padding value
    padding_hu = padding - 1024
    values[0][~is_padding] = padding_hu  # real pixels that would land on the padding value
    stored = stored_of(build(sources, values)[0])
    assert (stored[is_padding] == padding).all()
    assert not (stored[~is_padding] == padding).any()


# ---- argument checks ----


def test_values_shape_is_checked(sources: list[FileDataset]) -> None:
    with pytest.raises(
        ValueError, match=r"values must have shape \(len\(sources\), Rows, Columns\)"
    ):
        build(sources, np.zeros((4, 40, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="values must have shape"):
        build(sources, np.zeros((32, 40), dtype=np.float32))


def test_non_finite_values_are_rejected(sources: list[FileDataset]) -> None:
    values = hu(sources)
    values[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="values must be finite"):
        build(sources, values)


def test_sources_are_checked(sources: list[FileDataset]) -> None:
    with pytest.raises(ValueError, match="sources must contain at least one dataset"):
        build([], np.zeros((0, 32, 40)))
    sources[2].SeriesInstanceUID = generate_uid()
    with pytest.raises(ValueError, match=r"sources must share SeriesInstanceUID; sources\[2\]"):
        build(sources)
    localizer = make_ct_series(None, n_slices=1)
    localizer[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    with pytest.raises(ValueError, match=r"sources\[0\] cannot be enhanced: localizer"):
        build(localizer)


def test_zero_slope_is_rejected(sources: list[FileDataset]) -> None:
    sources[1].RescaleSlope = 0
    with pytest.raises(ValueError, match=r"sources\[1\] has RescaleSlope 0"):
        build_derived_series(sources, hu(sources), make_info(), NOW)


def test_choose_series_number() -> None:
    assert choose_series_number(3, [], 1000) == 1003
    assert choose_series_number(3, {1003, 1004, 7}, 1000) == 1005
    assert choose_series_number(None, [], 1000) == 1000
    assert choose_series_number(None, [1000], 1000) == 1001
    assert choose_series_number(2**31 - 2, [], 1) == 2**31 - 1
    with pytest.raises(ValueError, match="IS range"):
        choose_series_number(2**31 - 2, [2**31 - 1], 1)
    with pytest.raises(ValueError, match="offset must be an int >= 1"):
        choose_series_number(3, [], 0)


def test_derivation_code_is_in_cid_7203() -> None:
    code = codes.DCM.Smoothing
    assert (code.value, code.scheme_designator, code.meaning) == ("113087", "DCM", "Smoothing")
    assert (code.value, code.scheme_designator, code.meaning) == SMOOTHING
    assert code in Collection("CID7203").concepts.values()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"weights_sha256": "abc"}, "weights_sha256 must be 64 hexadecimal digits"),
        ({"strength": 1.5}, "strength must be within"),
        ({"derivation_code": ("999999", "DCM", "Smoothing")}, "not in CID 7203"),
        ({"derivation_code": ("113087", "DCM", "Denoising")}, "means 'Smoothing'"),
        ({"description": "x" * 1025}, "description must be at most 1024 characters"),
        ({"series_description_template": "{source} {oops}"}, "series_description_template"),
        ({"series_number": 2**31}, "series_number must be an int"),
        ({"manufacturer": "A\\B"}, "manufacturer must use printable ASCII"),
        ({"preset": ""}, "preset must be a non-empty string"),
    ],
)
def test_derivation_info_is_validated(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_info(**changes)


def test_other_scheme_derivation_code_is_accepted() -> None:
    info = make_info(derivation_code=("DN01", "99PACSNODE", "Deep-learning denoising"))
    assert dataclasses.asdict(info)["derivation_code"][1] == "99PACSNODE"


def test_naive_now_is_accepted(sources: list[FileDataset]) -> None:
    with strict_validation():
        (out, *_) = build_derived_series(sources, hu(sources), make_info(), datetime(2024, 1, 2))
    equipment = out.ContributingEquipmentSequence[-1]
    assert equipment.ContributionDateTime == "20240102000000.000000"


# ---- real data: the tilted Philips series ----


@pytest.fixture(scope="module")
def philips_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_philips_study(tmp_path_factory.mktemp("philips"))


@pytest.mark.parametrize("folder", ["S2010", "S3010"])
def test_philips_derived_series_is_valid(philips_root: Path, folder: str, tmp_path: Path) -> None:
    volume = load_series(sorted((philips_root / "S21610" / folder).glob("I*")))
    # The source axial images carry only warnings (retired Estimated Dose Saving, Elscint
    # private tags, "HEAD" as a one-component name), no errors; nothing inherited to fix.
    assert dciodvfy_errors(volume.paths[0]) == []

    smoothed = volume.values.copy()
    smoothed[:, 1:-1, 1:-1] = (
        volume.values[:, :-2, 1:-1] + volume.values[:, 2:, 1:-1] + volume.values[:, 1:-1, 1:-1]
    ) / 3.0
    derived = build(volume.datasets, smoothed)  # type: ignore[arg-type]
    identity = build(volume.datasets, volume.values)  # type: ignore[arg-type]
    for out, src in zip(identity, volume.datasets, strict=True):
        assert bytes(out.PixelData) == bytes(src.PixelData)

    assert len({ds.SeriesInstanceUID for ds in derived}) == 1
    for k in range(0, len(derived), 9):
        path = tmp_path / f"{k}.dcm"
        derived[k].save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
        back = roundtrip(derived[k])
        assert float(back.GantryDetectorTilt) == float(volume.datasets[k].GantryDetectorTilt)
        assert not any(elem.tag.is_private for elem in back.iterall())
        reread = pydicom.dcmread(path)
        decoded = reread.pixel_array * float(reread.RescaleSlope) + float(reread.RescaleIntercept)
        np.testing.assert_allclose(decoded, smoothed[k], atol=0.5)


def test_a_lossy_source_makes_a_lossy_marked_derived_instance(transfer_syntax_dir: Path) -> None:
    # Sent as JPEG 2000 (lossy) with no Lossy Image Compression attributes of its own.
    source = pydicom.dcmread(
        transfer_syntax_dir / "CTImage.dcm_JPEG2000TransferSyntax_1.2.840.10008.1.2.4.91.dcm"
    )
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio",
                    "LossyImageCompressionMethod"):  # fmt: skip
        source.pop(keyword, None)
    [derived] = build([source])
    assert derived.LossyImageCompression == "01"
    assert derived.LossyImageCompressionMethod == "ISO_15444_1"
    native = 512 * 512 * 2
    assert float(derived.LossyImageCompressionRatio) == pytest.approx(
        native / len(source.PixelData), abs=0.01
    )
    # A source that recorded its own JPEG step keeps it, once.
    jpeg = pydicom.dcmread(
        transfer_syntax_dir / "CTImage.dcm_JPEGProcess2_4TransferSyntax_1.2.840.10008.1.2.4.51.dcm"
    )
    [derived] = build([jpeg])
    assert derived.LossyImageCompression == "01"
    assert derived.LossyImageCompressionMethod == "ISO_10918_1"
    assert derived.LossyImageCompressionRatio == jpeg.LossyImageCompressionRatio
    # Lossless in, nothing claimed.
    lossless = pydicom.dcmread(transfer_syntax_dir / "CT1_J2KR.dcm")
    [derived] = build([lossless])
    assert "LossyImageCompression" not in derived or derived.LossyImageCompression == "00"
