"""Tests of super-resolution derived series: image plane, pixel module, padding, validity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileDataset
from pydicom.sr.codedict import Collection, codes
from pydicom.valuerep import format_number_as_ds

from pacs_node.dicom.derived import (
    SMOOTHING,
    SPATIAL_RESAMPLING,
    derivation_code_for_task,
)
from pacs_node.dicom.volume import load_series
from tests.helpers.dicom_checks import dciodvfy_errors, extract_philips_study, roundtrip
from tests.helpers.synthetic import file_path, make_ct_series
from tests.pacs_node.dicom.test_derived import build, hu, make_info

UNCHANGED_KEYWORDS = (
    "ImageOrientationPatient",
    "FrameOfReferenceUID",
    "SliceThickness",
    "SliceLocation",
    "WindowCenter",
    "WindowWidth",
    "RescaleIntercept",
    "RescaleSlope",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "InstanceNumber",
)


def upsample(values: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour in-plane upsampling, a stand-in for a super-resolution model."""
    return np.repeat(np.repeat(values, scale, axis=1), scale, axis=2)


def build_sr(sources: list[FileDataset], scale: int, **info_changes: Any) -> list[FileDataset]:
    info_changes.setdefault("derivation_code", SPATIAL_RESAMPLING)
    return build(sources, upsample(hu(sources), scale), **info_changes)


def affine(ds: Dataset) -> np.ndarray:
    """Return the 4x4 map (column i, row j, 0, 1) -> patient mm of PS3.3 C.7.6.2.1.1."""
    x = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
    y = np.array([float(v) for v in ds.ImageOrientationPatient[3:]])
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    matrix = np.eye(4)
    matrix[:3, 0] = x * column_spacing
    matrix[:3, 1] = y * row_spacing
    matrix[:3, 3] = [float(v) for v in ds.ImagePositionPatient]
    return matrix


def landmarks(ds: Dataset) -> np.ndarray:
    """Patient positions of the four outer field-of-view corners (pixel edges) and the centre."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    points = [
        (-0.5, -0.5),
        (columns - 0.5, -0.5),
        (-0.5, rows - 0.5),
        (columns - 0.5, rows - 0.5),
        ((columns - 1) / 2, (rows - 1) / 2),
    ]
    pixel = np.array([[i, j, 0.0, 1.0] for i, j in points]).T
    return (affine(ds) @ pixel)[:3].T


def oblique(sources: list[FileDataset], spacing: tuple[float, float]) -> list[FileDataset]:
    """Give every slice a doubly oblique orientation and anisotropic pixels, in place."""
    rotation = np.eye(3)
    for axis, angle in ((0, 23.0), (1, -31.0), (2, 12.5)):
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        r = np.eye(3)
        a, b = [k for k in range(3) if k != axis]
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        rotation = r @ rotation
    x, y = rotation[:, 0], rotation[:, 1]
    normal = np.cross(x, y)
    for k, ds in enumerate(sources):
        ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in (*x, *y)]
        ds.PixelSpacing = [format_number_as_ds(v) for v in spacing]
        position = np.array([-40.25, 17.5, 3.0]) + k * 2.5 * normal
        ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
    return sources


@pytest.fixture
def sources() -> list[FileDataset]:
    # Rectangular matrix so that swapping rows and columns cannot go unnoticed.
    return make_ct_series(None, n_slices=3, rows=24, cols=40, add_icon=True)


# ---- shapes and pixel module ----


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_rows_columns_and_pixels_scale(sources: list[FileDataset], scale: int) -> None:
    values = upsample(hu(sources), scale) - 12.3
    derived = build(sources, values, derivation_code=SPATIAL_RESAMPLING)
    for k, (out, src) in enumerate(zip(derived, sources, strict=True)):
        back = roundtrip(out)
        assert (back.Rows, back.Columns) == (24 * scale, 40 * scale)
        assert back.pixel_array.shape == (24 * scale, 40 * scale)
        assert (back.BitsAllocated, back.BitsStored, back.HighBit) == (16, 16, 15)
        assert len(bytes(back.PixelData)) == 24 * 40 * scale**2 * 2
        decoded = back.pixel_array * float(back.RescaleSlope) + float(back.RescaleIntercept)
        np.testing.assert_allclose(decoded, values[k], atol=0.5)
        for keyword in UNCHANGED_KEYWORDS:
            assert back[keyword].value == src[keyword].value, keyword


@pytest.mark.parametrize(
    ("spacing", "scale", "expected"),
    [
        ((0.7, 0.7), 2, ("0.35", "0.35")),
        ((0.7, 0.7), 3, ("0.23333333333333", "0.23333333333333")),
        ((0.5, 0.8), 4, ("0.125", "0.2")),
        ((0.703125, 0.9765625), 2, ("0.3515625", "0.48828125")),
    ],
)
def test_pixel_spacing_divided_and_valid_ds(
    sources: list[FileDataset], spacing: tuple[float, float], scale: int, expected: tuple[str, str]
) -> None:
    for ds in sources:
        ds.PixelSpacing = list(spacing)
    back = roundtrip(build_sr(sources, scale)[0])
    assert tuple(str(v) for v in back.PixelSpacing) == expected
    # Row spacing first, column spacing second (PS3.3 10.7.1.3), each at most 16 characters.
    assert all(len(str(v)) <= 16 for v in back.PixelSpacing)
    assert all(len(str(v)) <= 16 for v in back.ImagePositionPatient)
    for got, source_value in zip(back.PixelSpacing, spacing, strict=True):
        assert float(got) == pytest.approx(source_value / scale, rel=1e-12)


# ---- image plane geometry ----


def test_axial_position_shift_by_hand(sources: list[FileDataset]) -> None:
    # Axial, 0.7 mm pixels, s = 2: the first centre moves a quarter source pixel (0.175 mm)
    # towards -x (row direction) and -y (column direction).
    src = sources[0]
    back = roundtrip(build_sr(sources, 2)[0])
    expected = [
        float(src.ImagePositionPatient[0]) - 0.175,
        float(src.ImagePositionPatient[1]) - 0.175,
        float(src.ImagePositionPatient[2]),
    ]
    np.testing.assert_allclose([float(v) for v in back.ImagePositionPatient], expected, atol=1e-9)


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("geometry", ["axial", "tilted", "oblique"])
def test_position_shift_formula(geometry: str, scale: int) -> None:
    sources = make_ct_series(
        None, n_slices=2, rows=24, cols=40, tilt_deg=18.5 if geometry == "tilted" else 0.0
    )
    if geometry == "oblique":
        oblique(sources, (0.6, 0.9))
    for out, src in zip(build_sr(sources, scale), sources, strict=True):
        back = roundtrip(out)
        x = np.array([float(v) for v in src.ImageOrientationPatient[:3]])
        y = np.array([float(v) for v in src.ImageOrientationPatient[3:]])
        row_spacing, column_spacing = (float(v) for v in src.PixelSpacing)
        position = np.array([float(v) for v in src.ImagePositionPatient])
        # Along X (row direction) steps the column spacing, along Y the row spacing.
        factor = 1 - 1 / scale
        expected = position - column_spacing / 2 * factor * x - row_spacing / 2 * factor * y
        got = np.array([float(v) for v in back.ImagePositionPatient])
        np.testing.assert_allclose(got, expected, atol=1e-9)
        assert list(back.ImageOrientationPatient) == list(src.ImageOrientationPatient)


@pytest.mark.parametrize("scale", [2, 3, 5])
@pytest.mark.parametrize("geometry", ["axial", "tilted", "oblique"])
def test_field_of_view_corners_and_centre_unchanged(geometry: str, scale: int) -> None:
    sources = make_ct_series(
        None, n_slices=2, rows=24, cols=40, tilt_deg=18.5 if geometry == "tilted" else 0.0
    )
    if geometry == "oblique":
        oblique(sources, (0.6, 0.9))
    for out, src in zip(build_sr(sources, scale), sources, strict=True):
        before, after = landmarks(src), landmarks(roundtrip(out))
        # DS keeps about 12 significant digits: identical far below a micrometre.
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
        # The first pixel centre itself did move (by less than half a source pixel).
        moved = np.linalg.norm(
            np.array([float(v) for v in out.ImagePositionPatient])
            - np.array([float(v) for v in src.ImagePositionPatient])
        )
        assert 0 < moved < max(float(v) for v in src.PixelSpacing) / 2 * math.sqrt(2)


def test_scale_one_leaves_geometry_untouched(sources: list[FileDataset]) -> None:
    for out, src in zip(build(sources), sources, strict=True):
        back = roundtrip(out)
        for keyword in ("ImagePositionPatient", "PixelSpacing", "Rows", "Columns"):
            assert back[keyword].value == src[keyword].value, keyword
        (item,) = back.SourceImageSequence
        assert item.SpatialLocationsPreserved == "YES"


# ---- references, derivation and dropped attributes ----


def test_spatial_locations_not_preserved(sources: list[FileDataset]) -> None:
    for out, src in zip(build_sr(sources, 2), sources, strict=True):
        back = roundtrip(out)
        (item,) = back.SourceImageSequence
        assert item.ReferencedSOPInstanceUID == src.SOPInstanceUID
        # Enumerated Values YES, NO, REORIENTED_ONLY (PS3.3 C.7.6.1.1.4).
        assert item.SpatialLocationsPreserved == "NO"
        (code,) = back.DerivationCodeSequence
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
            "113085",
            "DCM",
            "Spatial resampling",
        )


def test_overlays_and_shutters_dropped_only_when_resampled(sources: list[FileDataset]) -> None:
    for ds in sources:
        ds.add_new(0x60000010, "US", 24)  # Overlay Rows
        ds.add_new(0x60000011, "US", 40)  # Overlay Columns
        ds.add_new(0x60000040, "CS", "G")  # Overlay Type
        ds.add_new(0x60000050, "SS", [1, 1])  # Overlay Origin
        ds.add_new(0x60000100, "US", 1)  # Overlay Bits Allocated
        ds.add_new(0x60000102, "US", 0)  # Overlay Bit Position
        ds.add_new(0x60003000, "OW", bytes(24 * 40 // 8))  # Overlay Data
        ds.ShutterShape = "RECTANGULAR"
        ds.ShutterLeftVerticalEdge = 2
        ds.ShutterRightVerticalEdge = 38
        ds.ShutterUpperHorizontalEdge = 2
        ds.ShutterLowerHorizontalEdge = 22
        ds.PixelAspectRatio = [1, 1]
    resampled = roundtrip(build_sr(sources, 2)[0])
    assert not any(0x6000 <= elem.tag.group <= 0x601E for elem in resampled)
    assert not any(elem.keyword.startswith("Shutter") for elem in resampled)
    # Equal scaling keeps the ratio of row to column spacing (PS3.3 C.7.6.3.1.7).
    assert list(resampled.PixelAspectRatio) == [1, 1]
    same_grid = roundtrip(build(sources)[0])
    assert same_grid[0x60000010].value == 24
    assert same_grid.ShutterShape == "RECTANGULAR"


# ---- pixel padding ----


@pytest.mark.parametrize(("pixel_representation", "padding"), [(1, -2000), (0, 0)])
@pytest.mark.parametrize("scale", [2, 3])
def test_padding_mask_is_upsampled(pixel_representation: int, padding: int, scale: int) -> None:
    sources = make_ct_series(
        None,
        n_slices=2,
        rows=24,
        cols=40,
        pixel_representation=pixel_representation,
        pixel_padding_value=padding,
    )
    # The reconstruction circle is symmetric: add an off-centre padding block so that a
    # flipped or transposed mask would show.
    stored_source = sources[0].pixel_array.copy()
    stored_source[2:6, 9:16] = padding
    sources[0].PixelData = stored_source.tobytes()
    is_padding = sources[0].pixel_array == padding
    assert is_padding.any() and not is_padding.all()
    expected_mask = np.kron(is_padding, np.ones((scale, scale), dtype=bool))
    values = upsample(hu(sources), scale) + 500.0  # would move padding away from its value
    values[0][~expected_mask] = padding - 1024  # real pixels that would land on padding
    stored = np.asarray(build(sources, values)[0].pixel_array)
    np.testing.assert_array_equal(stored == padding, expected_mask)


# ---- argument checks ----


@pytest.mark.parametrize(
    ("shape", "detail"),
    [
        ((3, 48, 100), r"Rows x 2, Columns x 2\.5"),  # non-integer column ratio
        ((3, 48, 120), r"Rows x 2, Columns x 3"),  # unequal integer ratios
        ((3, 36, 60), r"Rows x 1\.5, Columns x 1\.5"),  # non-integer scale
        ((3, 12, 20), r"Rows x 0\.5, Columns x 0\.5"),  # downsampling
        ((3, 0, 0), r"Rows x 0, Columns x 0"),
        ((2, 48, 80), r"got \(2, 48, 80\)$"),  # one slice short
        ((48, 80), r"got \(48, 80\)$"),
    ],
)
def test_bad_shapes_are_rejected(
    sources: list[FileDataset], shape: tuple[int, ...], detail: str
) -> None:
    with pytest.raises(ValueError, match=r"values must have shape \(len\(sources\), Rows") as info:
        build(sources, np.zeros(shape, dtype=np.float32))
    assert "Rows*s, Columns*s" in str(info.value)
    assert "integer scale s >= 2 on both axes" in str(info.value)
    assert info.match(detail)


def test_too_many_rows_are_rejected() -> None:
    sources = make_ct_series(None, n_slices=1, rows=2, cols=3)
    # A zero-strided view: the shape is checked before any value is read.
    values = np.broadcast_to(np.float32(0), (1, 2 * 32768, 3 * 32768))
    with pytest.raises(ValueError, match=r"at most 65535 \(US\)"):
        build(sources, values)


def test_missing_pixel_spacing_is_rejected(sources: list[FileDataset]) -> None:
    del sources[1].PixelSpacing
    with pytest.raises(ValueError, match=r"sources\[1\] has no PixelSpacing"):
        build_sr(sources, 2)
    build(sources)  # the same grid needs no spacing


# ---- derivation code by task ----


def test_derivation_code_for_task() -> None:
    assert derivation_code_for_task("denoise") == SMOOTHING
    assert derivation_code_for_task("diffusion") == SMOOTHING
    assert derivation_code_for_task("identity") == SMOOTHING
    assert derivation_code_for_task("super_resolution") == SPATIAL_RESAMPLING
    with pytest.raises(ValueError, match=r"task must be one of .*'super_resolution'.*'sr'"):
        derivation_code_for_task("sr")


def test_spatial_resampling_is_in_cid_7203() -> None:
    code = codes.DCM.SpatialResampling
    assert (code.value, code.scheme_designator, code.meaning) == SPATIAL_RESAMPLING
    assert SPATIAL_RESAMPLING == ("113085", "DCM", "Spatial resampling")
    assert code in Collection("CID7203").concepts.values()
    make_info(derivation_code=derivation_code_for_task("super_resolution"))  # validated


# ---- validity ----


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"pixel_representation": 0, "bits_stored": 12, "tilt_deg": 18.5},
        {"pixel_padding_value": -2000, "add_icon": True},
        {"modality": "MR", "pixel_representation": 0},
    ],
)
def test_sr_output_passes_dciodvfy(tmp_path: Path, kwargs: dict[str, Any], scale: int) -> None:
    sources = make_ct_series(tmp_path / "src", n_slices=2, rows=24, cols=40, **kwargs)
    for src in sources:
        assert dciodvfy_errors(file_path(src)) == [], "source must be valid to start with"
    derived = build_sr(sources, scale)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for k, ds in enumerate(derived):
        roundtrip(ds)
        path = out_dir / f"{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []


def test_philips_sr_series_is_valid(tmp_path: Path) -> None:
    root = extract_philips_study(tmp_path / "philips")
    volume = load_series(sorted((root / "S21610" / "S2010").glob("I*")))
    sources = volume.datasets[:2]
    values = upsample(volume.values[:2], 2)
    derived = build(sources, values, derivation_code=SPATIAL_RESAMPLING)  # type: ignore[arg-type]
    for k, (out, src) in enumerate(zip(derived, sources, strict=True)):
        path = tmp_path / f"{k}.dcm"
        out.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
        back = roundtrip(out)
        assert (back.Rows, back.Columns) == (2 * src.Rows, 2 * src.Columns)
        np.testing.assert_allclose(landmarks(back), landmarks(src), rtol=0, atol=1e-6)
        decoded = back.pixel_array * float(back.RescaleSlope) + float(back.RescaleIntercept)
        np.testing.assert_allclose(decoded, values[k], atol=0.5)
