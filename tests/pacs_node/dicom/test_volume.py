"""Tests of loading a series into a volume sorted along the slice normal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import generate_uid

from pacs_node.dicom.volume import SeriesVolume, load_series
from pacs_node.errors import InvalidSeriesError
from tests.helpers.dicom_checks import dciodvfy_errors, extract_philips_study
from tests.helpers.synthetic import (
    drop_pixel_data,
    file_path,
    make_ct_series,
    truncate_pixel_data,
)


def _paths(series: list[FileDataset]) -> list[Path]:
    return [file_path(ds) for ds in series]


def _normal_positions(volume: SeriesVolume) -> np.ndarray:
    iop = np.array([float(v) for v in volume.datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    return np.array(
        [np.dot([float(v) for v in ds.ImagePositionPatient], normal) for ds in volume.datasets]
    )


@pytest.mark.parametrize("tilt_deg", [0.0, 18.5, -18.5])
def test_sorted_along_normal_not_by_instance_number_or_name(
    tmp_path: Path, tilt_deg: float
) -> None:
    series = make_ct_series(tmp_path, n_slices=8, tilt_deg=tilt_deg, seed=3)
    numbers = [int(ds.InstanceNumber) for ds in series]
    assert numbers != sorted(numbers), "generator must shuffle InstanceNumber"

    # Hand the files over in name order and in reverse; the result must not depend on it.
    for paths in (sorted(_paths(series)), sorted(_paths(series), reverse=True)):
        volume = load_series(paths)
        assert [ds.SOPInstanceUID for ds in volume.datasets] == [ds.SOPInstanceUID for ds in series]
        assert [Path(p).name for p in volume.paths] == [file_path(ds).name for ds in series]
        assert np.all(np.diff(_normal_positions(volume)) > 0)


@pytest.mark.parametrize("tilt_deg", [0.0, 16.5, -18.5])
def test_spacing_is_along_the_normal(tmp_path: Path, tilt_deg: float) -> None:
    series = make_ct_series(
        tmp_path, n_slices=5, tilt_deg=tilt_deg, slice_spacing_mm=2.5, pixel_spacing_mm=0.8
    )
    volume = load_series(_paths(series))
    expected_z = 2.5 * math.cos(math.radians(tilt_deg))
    assert volume.spacing_mm == pytest.approx((expected_z, 0.8, 0.8), abs=1e-4)


@pytest.mark.parametrize(("pixel_representation", "bits_stored"), [(1, 16), (0, 12), (0, 16)])
def test_values_are_float32_hounsfield_units(
    tmp_path: Path, pixel_representation: int, bits_stored: int
) -> None:
    series = make_ct_series(
        tmp_path,
        n_slices=3,
        rows=48,
        cols=40,
        pixel_representation=pixel_representation,
        bits_stored=bits_stored,
    )
    volume = load_series(_paths(series))
    assert volume.values.dtype == np.float32
    assert volume.values.shape == (3, 48, 40)
    for k, ds in enumerate(volume.datasets):
        stored = ds.pixel_array.astype(np.float64)
        expected = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.values[k], expected.astype(np.float32))
    centre = volume.values[:, 20:28, 18:22]
    corner = volume.values[:, :3, :3]
    assert abs(float(np.median(centre))) < 30.0  # water
    assert float(np.median(corner)) == pytest.approx(-1000.0, abs=30.0)  # air


def test_single_slice(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path, n_slices=1, slice_spacing_mm=3.0)
    volume = load_series(_paths(series))
    assert volume.values.shape == (1, 64, 64)
    assert volume.spacing_mm[0] == pytest.approx(3.0)


# ---- bad input: every problem is an InvalidSeriesError naming the file and the problem ----


def _expect_error(paths: list[Path], *fragments: str | Path) -> None:
    with pytest.raises(InvalidSeriesError) as info:
        load_series(paths)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, message


def test_empty(tmp_path: Path) -> None:
    _expect_error([], "no files")


def test_unreadable_file(tmp_path: Path) -> None:
    paths = _paths(make_ct_series(tmp_path, n_slices=2))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all")
    _expect_error([*paths, junk], str(junk), "unreadable")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.dcm"
    _expect_error([missing], str(missing), "unreadable")


def test_file_truncated_in_header(tmp_path: Path) -> None:
    paths = _paths(make_ct_series(tmp_path, n_slices=2))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:600])
    _expect_error(paths, str(paths[1]))


def test_file_truncated_in_pixel_data(tmp_path: Path) -> None:
    paths = _paths(make_ct_series(tmp_path, n_slices=2))
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[:-1000])
    _expect_error(paths, str(paths[0]), "PixelData has", "truncated")


def test_pixel_data_length_mismatch(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path, n_slices=3)
    bad = truncate_pixel_data(series[1])
    bad.save_as(file_path(bad), enforce_file_format=True)
    _expect_error(_paths(series), file_path(bad), "PixelData has 4096 bytes, expected 8192")


def test_missing_pixel_data(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path, n_slices=3)
    bad = drop_pixel_data(series[2])
    bad.save_as(file_path(bad), enforce_file_format=True)
    _expect_error(_paths(series), file_path(bad), "PixelData is missing")


def test_different_matrix_size(tmp_path: Path) -> None:
    uid = generate_uid()
    a = make_ct_series(tmp_path / "a", n_slices=2, series_uid=uid)
    b = make_ct_series(tmp_path / "b", n_slices=1, rows=32, cols=32, series_uid=uid)
    _expect_error(_paths(a) + _paths(b), file_path(b[0]), "32 x 32", "64 x 64")


def test_different_orientation(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path, n_slices=3)
    series[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    series[1].save_as(file_path(series[1]), enforce_file_format=True)
    _expect_error(_paths(series), file_path(series[1]), "ImageOrientationPatient", "not parallel")


def test_mixed_series(tmp_path: Path) -> None:
    a = make_ct_series(tmp_path / "a", n_slices=2)
    b = make_ct_series(tmp_path / "b", n_slices=2)
    _expect_error(_paths(a) + _paths(b), file_path(b[0]), "SeriesInstanceUID", "mixed")


def test_duplicate_positions(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path, n_slices=3)
    copy = pydicom.dcmread(file_path(series[1]))
    copy.SOPInstanceUID = generate_uid()
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    duplicate = tmp_path / "duplicate.dcm"
    copy.save_as(duplicate, enforce_file_format=True)
    _expect_error([*_paths(series), duplicate], "same plane", "duplicate", "duplicate.dcm")


def test_multiframe(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path, n_slices=2)
    ds = series[0]
    ds.NumberOfFrames = 2
    ds.PixelData = bytes(ds.PixelData) * 2
    ds.save_as(file_path(ds), enforce_file_format=True)
    _expect_error(_paths(series), file_path(ds), "multi-frame", "not supported yet")


def test_not_monochrome(tmp_path: Path) -> None:
    series = make_ct_series(tmp_path, n_slices=2)
    ds = series[1]
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(file_path(ds), enforce_file_format=True)
    _expect_error(_paths(series), file_path(ds), "PALETTE COLOR", "MONOCHROME")


# ---- synthetic sources are valid and the real tilted Philips series load ----


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"modality": "MR", "pixel_representation": 0},
        {"pixel_representation": 0, "bits_stored": 12, "tilt_deg": 18.5},
        {"pixel_padding_value": -2000, "add_icon": True},
    ],
)
def test_synthetic_sources_pass_dciodvfy(tmp_path: Path, kwargs: dict[str, object]) -> None:
    series = make_ct_series(tmp_path, n_slices=2, **kwargs)  # type: ignore[arg-type]
    for ds in series:
        assert dciodvfy_errors(file_path(ds)) == []


@pytest.fixture(scope="module")
def philips_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_philips_study(tmp_path_factory.mktemp("philips"))


@pytest.mark.parametrize(
    ("folder", "n_slices", "tilt_deg", "pixel_mm"),
    [("S2010", 54, -18.5, 0.482421875), ("S3010", 58, 16.5, 0.40625)],
)
def test_philips_tilted_series(
    philips_root: Path, folder: str, n_slices: int, tilt_deg: float, pixel_mm: float
) -> None:
    paths = sorted((philips_root / "S21610" / folder).glob("I*"))
    volume = load_series(paths)
    assert volume.values.shape == (n_slices, 512, 512)
    assert {float(ds.GantryDetectorTilt) for ds in volume.datasets} == {tilt_deg}
    distances = _normal_positions(volume)
    assert np.all(np.diff(distances) > 0)
    # Positions step 2.5 mm along the table; the planes are 2.5 * cos(tilt) apart.
    expected_z = 2.5 * math.cos(math.radians(tilt_deg))
    assert volume.spacing_mm[0] == pytest.approx(expected_z, abs=1e-3)
    assert volume.spacing_mm[1:] == pytest.approx((pixel_mm, pixel_mm))
    # Head phantom in air: air near -1000 HU, some plastic/bone well above water.
    assert float(volume.values.min()) <= -900.0
    assert float(volume.values.max()) > 100.0
