"""Shared checks for DICOM tests: strict pydicom validation, byte round trips, dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset, FileDataset

__all__ = [
    "PHILIPS_TARBALL",
    "dciodvfy_errors",
    "extract_philips_study",
    "require_dciodvfy",
    "roundtrip",
    "strict_validation",
]

# Shared data lives in ../shared/data relative to the project root (shared/data/README.md).
PHILIPS_TARBALL = Path(__file__).resolve().parents[3] / "shared/data/ct_study_philips.tar.xz"


@contextmanager
def strict_validation() -> Iterator[None]:
    """Make pydicom raise on invalid values when reading and setting; restore afterwards."""
    settings = config.settings
    saved = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = config.RAISE
    settings.writing_validation_mode = config.RAISE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def roundtrip(ds: FileDataset) -> Dataset:
    """Write ``ds`` as a DICOM file to bytes and read it back with strict validation."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with strict_validation():
        back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
        # Values are converted lazily; touching every element makes validation run now.
        for elem in back.iterall():
            _ = elem.value
    return back


def require_dciodvfy() -> str:
    """Return the dciodvfy path or skip the test with a clear message."""
    path = shutil.which("dciodvfy")
    if path is None:
        pytest.skip("dciodvfy not found: install the Debian package dicom3tools to validate IODs")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """Return dciodvfy's lines starting with "Error" for one file (skips without dciodvfy)."""
    binary = require_dciodvfy()
    result = subprocess.run(
        [binary, str(path)], capture_output=True, text=True, check=False, timeout=60
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def extract_philips_study(dest: Path) -> Path:
    """Extract the shared Philips study into ``dest`` and return its root, or skip."""
    if not PHILIPS_TARBALL.is_file():
        pytest.skip(f"shared data {PHILIPS_TARBALL} is absent (see shared/data/README.md)")
    with tarfile.open(PHILIPS_TARBALL, "r:xz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "ct_study_philips"


def philips_slices(dest: Path, count: int, first: int = 20, series_number: int = 201) -> list[Path]:
    """``count`` consecutive axial slices (by Instance Number, from ``first``) of one series
    of the shared Philips study, extracted under ``dest``; or skip."""
    study = extract_philips_study(dest)
    series = []
    for path in study.rglob("I*"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if int(ds.get("SeriesNumber", 0)) == series_number:
            series.append((int(ds.InstanceNumber), path))
    return [path for _, path in sorted(series)[first : first + count]]
