"""Load a single-frame CT/MR/PET series into a volume sorted along the slice normal."""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from highdicom.spatial import get_series_volume_positions
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from pacs_node.dicom.codecs import DecodeError, pixel_array
from pacs_node.errors import InvalidSeriesError

__all__ = ["SeriesVolume", "load_series"]

logger = logging.getLogger(__name__)

# Two slices closer than this along the normal are the same plane (duplicate positions).
_DUPLICATE_TOL_MM = 1e-3
# Direction cosines and pixel spacings of one series may differ only by rounding in DS.
_ORIENTATION_TOL = 1e-4
_SPACING_TOL_MM = 1e-4

# Errors pydicom raises for unreadable, truncated or malformed files and values.
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, struct.error)


@dataclass(frozen=True)
class SeriesVolume:
    """A series as a 3-D array of modality values with its datasets in the same order.

    Attributes
    ----------
    values : numpy.ndarray
        float32 array (z, y, x) of modality values: stored values through the Modality LUT
        (``stored * RescaleSlope + RescaleIntercept``; Hounsfield units for CT).
    datasets : list of pydicom.dataset.Dataset
        Full datasets (pixel data included), ``datasets[k]`` is the slice ``values[k]``.
    paths : list of pathlib.Path
        Files the datasets were read from, same order.
    spacing_mm : tuple of float
        (distance between slice planes along the normal, row spacing, column spacing).
        For a gantry-tilted series the first value is the spacing along the normal, which is
        the table increment times the cosine of the tilt.
    """

    values: np.ndarray
    datasets: list[Dataset]
    paths: list[Path]
    spacing_mm: tuple[float, float, float]


def _float_values(ds: Dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    """Return ``count`` float values of a DS attribute or raise naming the file."""
    value = ds.get(keyword)
    if value is None:
        raise InvalidSeriesError(f"{path}: {keyword} is missing")
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) != count:
        raise InvalidSeriesError(f"{path}: {keyword} has {len(values)} values, expected {count}")
    try:
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidSeriesError(f"{path}: {keyword} is not numeric ({exc})") from exc


def _expected_pixel_bytes(ds: Dataset) -> int:
    """Return the native PixelData length of one frame (PS3.5 8.1.1), before even padding."""
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    bits *= int(ds.BitsAllocated)
    return (bits + 7) // 8


def _check_instance(ds: Dataset, path: Path) -> None:
    """Raise InvalidSeriesError if one instance cannot be part of a volume."""
    frames = ds.get("NumberOfFrames")
    if frames is not None and int(frames) > 1:
        raise InvalidSeriesError(
            f"{path}: multi-frame instance ({int(frames)} frames) is not supported yet"
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InvalidSeriesError(
            f"{path}: PhotometricInterpretation {photometric or '(missing)'} is not "
            "MONOCHROME1 or MONOCHROME2; only grayscale images can be enhanced"
        )
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise InvalidSeriesError(f"{path}: SamplesPerPixel is {samples}, expected 1")
    for keyword in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation"):
        if ds.get(keyword) is None:
            raise InvalidSeriesError(f"{path}: {keyword} is missing (Image Pixel module)")
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise InvalidSeriesError(f"{path}: float pixel data is not supported")
    if "PixelData" not in ds:
        raise InvalidSeriesError(f"{path}: PixelData is missing (header only or truncated file)")
    transfer_syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    # Encapsulated (compressed) PixelData has no fixed length; decoding checks it later.
    if transfer_syntax is None or not transfer_syntax.is_compressed:
        expected = _expected_pixel_bytes(ds)
        actual = len(ds.PixelData)
        # Native PixelData is padded to an even length (PS3.5 7.1.1, 8.1.1).
        if actual not in (expected, expected + expected % 2):
            raise InvalidSeriesError(
                f"{path}: PixelData has {actual} bytes, expected {expected} "
                f"(Rows {ds.Rows} x Columns {ds.Columns} x BitsAllocated {ds.BitsAllocated} / 8);"
                " the file is truncated or corrupt"
            )
    if not ds.get("SeriesInstanceUID"):
        raise InvalidSeriesError(f"{path}: SeriesInstanceUID is missing")


def _read(path: Path) -> Dataset:
    """Read and check one file, translating pydicom's errors into InvalidSeriesError."""
    try:
        ds = pydicom.dcmread(path)
        _check_instance(ds, path)
    except InvalidSeriesError:
        raise
    except _READ_ERRORS as exc:
        raise InvalidSeriesError(f"{path}: unreadable DICOM file ({exc})") from exc
    return ds


def _pixel_values(ds: Dataset, path: Path) -> np.ndarray:
    """Return one slice as float32 modality values (PS3.3 C.11.1, Modality LUT module)."""
    try:
        stored = pixel_array(ds)
        values = apply_modality_lut(stored, ds)
    except (*_READ_ERRORS, RuntimeError, NotImplementedError, DecodeError) as exc:
        raise InvalidSeriesError(f"{path}: pixel data cannot be decoded ({exc})") from exc
    return np.asarray(values, dtype=np.float32)


def load_series(paths: Sequence[Path]) -> SeriesVolume:
    """Read the files of one series and stack them along the slice normal.

    Slices are sorted by the projection of ImagePositionPatient on the normal
    ``row cosines x column cosines`` of ImageOrientationPatient (PS3.3 C.7.6.2.1.1), never
    by file name or InstanceNumber, so gantry-tilted series (whose positions step along the
    table, not along the normal) are sorted correctly too.

    Parameters
    ----------
    paths : Sequence[pathlib.Path]
        Files of one single-frame grayscale series, in any order.

    Returns
    -------
    SeriesVolume
        The values, datasets and paths sorted along the normal, and the spacing.

    Raises
    ------
    InvalidSeriesError
        If a file is unreadable or truncated, has no or wrongly sized PixelData, is
        multi-frame or not MONOCHROME, or if the files do not form one volume (mixed
        SeriesInstanceUID, Rows/Columns, orientation or pixel spacing; duplicate positions).
    """
    if not paths:
        raise InvalidSeriesError("the series has no files")
    files = [Path(p) for p in paths]
    datasets = [_read(path) for path in files]

    first, first_path = datasets[0], files[0]
    series_uid = first.SeriesInstanceUID
    shape = (int(first.Rows), int(first.Columns))
    orientation = _float_values(first, "ImageOrientationPatient", 6, first_path)
    pixel_spacing = _float_values(first, "PixelSpacing", 2, first_path)
    for ds, path in zip(datasets[1:], files[1:], strict=True):
        if ds.SeriesInstanceUID != series_uid:
            raise InvalidSeriesError(
                f"{path}: SeriesInstanceUID {ds.SeriesInstanceUID} differs from {series_uid} "
                f"of {first_path}; files of several series were mixed"
            )
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise InvalidSeriesError(
                f"{path}: {ds.Rows} x {ds.Columns} pixels differs from {shape[0]} x {shape[1]} "
                f"of {first_path}"
            )
        other = _float_values(ds, "ImageOrientationPatient", 6, path)
        if not np.allclose(other, orientation, atol=_ORIENTATION_TOL, rtol=0.0):
            raise InvalidSeriesError(
                f"{path}: ImageOrientationPatient {other.tolist()} differs from "
                f"{orientation.tolist()} of {first_path}; slices are not parallel"
            )
        other = _float_values(ds, "PixelSpacing", 2, path)
        if not np.allclose(other, pixel_spacing, atol=_SPACING_TOL_MM, rtol=0.0):
            raise InvalidSeriesError(
                f"{path}: PixelSpacing {other.tolist()} differs from "
                f"{pixel_spacing.tolist()} of {first_path}"
            )

    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 0.5:
        raise InvalidSeriesError(
            f"{first_path}: ImageOrientationPatient {orientation.tolist()} has parallel or "
            "zero row and column direction cosines"
        )
    normal /= norm
    positions = np.stack(
        [
            _float_values(ds, "ImagePositionPatient", 3, path)
            for ds, path in zip(datasets, files, strict=True)
        ]
    )
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    sorted_distances = distances[order]
    gaps = np.diff(sorted_distances)
    if gaps.size and float(gaps.min()) < _DUPLICATE_TOL_MM:
        k = int(np.argmin(gaps))
        raise InvalidSeriesError(
            f"{files[order[k]]} and {files[order[k + 1]]} lie in the same plane "
            f"(position {sorted_distances[k]:.3f} mm along the slice normal); duplicate slices"
        )

    sorted_datasets = [datasets[i] for i in order]
    sorted_paths = [files[i] for i in order]
    spacing_z = _slice_spacing(sorted_datasets, gaps)
    values = np.stack(
        [_pixel_values(ds, path) for ds, path in zip(sorted_datasets, sorted_paths, strict=True)]
    )
    return SeriesVolume(
        values=values,
        datasets=sorted_datasets,
        paths=sorted_paths,
        # PixelSpacing is (row spacing, column spacing) = (y, x) (PS3.3 10.7.1.3).
        spacing_mm=(spacing_z, float(pixel_spacing[0]), float(pixel_spacing[1])),
    )


def _slice_spacing(sorted_datasets: list[Dataset], gaps: np.ndarray) -> float:
    """Return the spacing along the normal, using highdicom's check for regular volumes.

    highdicom returns no spacing for gantry-tilted stacks (positions not along the normal)
    and for irregular gaps; then the median gap along the normal is used.
    """
    if not gaps.size:
        thickness = sorted_datasets[0].get("SpacingBetweenSlices") or sorted_datasets[0].get(
            "SliceThickness"
        )
        return float(thickness) if thickness else 1.0
    spacing, _ = get_series_volume_positions(
        sorted_datasets, sort=False, orientation_tol=_ORIENTATION_TOL
    )
    if spacing is not None:
        return float(spacing)
    logger.info(
        "series %s is not a regular orthogonal volume (gantry tilt or uneven gaps); "
        "using the median distance between planes",
        sorted_datasets[0].SeriesInstanceUID,
    )
    return float(np.median(gaps))
