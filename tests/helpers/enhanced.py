"""Multi-frame test objects: single-frame series converted by highdicom."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset


def legacy_converted(datasets: list[Dataset], path: Path) -> Path:
    """The single-frame ``datasets`` as one Legacy Converted Enhanced CT or MR file."""
    modality = str(datasets[0].Modality)
    kind = (hd.legacy.LegacyConvertedEnhancedCTImage if modality == "CT"
            else hd.legacy.LegacyConvertedEnhancedMRImage)  # fmt: skip
    converted = kind(datasets, series_instance_uid=hd.UID(), series_number=9,
                     sop_instance_uid=hd.UID(), instance_number=1)  # fmt: skip
    converted.save_as(path, enforce_file_format=True)
    return path
