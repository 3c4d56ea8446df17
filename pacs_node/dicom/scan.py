"""Find the DICOM files under a folder and group them by series (offline use and training)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

logger = logging.getLogger(__name__)


@dataclass
class SeriesFiles:
    """The files of one series and their headers (read without pixel data), same order."""

    paths: list[Path] = field(default_factory=list)
    headers: list[Dataset] = field(default_factory=list)


def scan_series(folder: Path) -> dict[str, SeriesFiles]:
    """Every readable DICOM file under ``folder`` with a Series Instance UID, by series.

    Files that are not DICOM (licence texts, ...) and objects without a series (a
    DICOMDIR) are skipped with a log line.
    """
    series: dict[str, SeriesFiles] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            logger.info("skipping %s: not a readable DICOM file", path)
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            logger.info("skipping %s: no Series Instance UID (e.g. a DICOMDIR)", path)
            continue
        files = series.setdefault(uid, SeriesFiles())
        files.paths.append(path)
        files.headers.append(ds)
    return series
