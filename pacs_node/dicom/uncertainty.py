"""The uncertainty map of a stochastic model: a secondary derived series, never the image.

Per pixel it holds the spread (standard deviation, HU for CT) across samples of the
model's full sampler drawn with other seeds (the enhanced image among them when the preset
runs every step; see ``pacs_node.pipeline``): where it is high, the sampler is unsure of
what it draws there. It is built like the enhanced
series (same study, geometry and source references, its own UIDs and Series Number), then
labelled as a map: its own derivation code and description, the preset name with
``uncertainty`` in the Series Description, a window over its own values, and pixels stored
at 0.1 unit steps from 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileDataset

from pacs_node.dicom.derived import DerivationInfo, build_derived_series

__all__ = ["UNCERTAINTY_CODE", "UNCERTAINTY_STEP", "build_uncertainty_series"]

# CID 7203 (Image Derivation) has no code for a model's uncertainty; it is extensible, so
# the node uses a code of its own (a "99" private coding scheme, PS3.16 8.2).
UNCERTAINTY_CODE = ("SAMPLESPREAD", "99PACSNODE", "Per-pixel spread across model samples")
# Stored value 1 = 0.1 HU (Rescale Slope): spreads of a few HU keep their detail.
UNCERTAINTY_STEP = 0.1
# What the source's pixels meant that the map's do not: padding, value mappings and
# display transforms other than its own window.
_SPREAD_ATTRIBUTES = ("PixelPaddingValue", "PixelPaddingRangeLimit", "VOILUTSequence",
                      "VOILUTFunction", "WindowCenterWidthExplanation",
                      "RealWorldValueMappingSequence", "SmallestImagePixelValue",
                      "LargestImagePixelValue", "ModalityLUTSequence",
                      "RescaleType")  # fmt: skip


def build_uncertainty_series(
    sources: Sequence[Dataset],
    spread: np.ndarray,
    info: DerivationInfo,
    now: datetime,
    samples: int,
    series_number: int,
    enhanced_series_uid: str,
) -> list[FileDataset]:
    """The uncertainty map of the series that ``info`` describes, one instance per source.

    Parameters
    ----------
    sources
        The source series' datasets, as for :func:`build_derived_series`.
    spread
        Per-pixel spread (len(sources), rows, columns) on the enhanced series' grid, ≥ 0,
        in modality units (HU for CT).
    info
        The enhanced series' derivation. The map's UIDs add ``uncertainty-map`` and the
        sample count to its variant (so they differ from the enhanced series' and change
        with the count); its Series Description shows the preset as ``<preset>
        uncertainty``; it has its own description and derivation code.
    now
        Creation time, as for the enhanced series.
    samples
        How many samples the spread is taken over.
    series_number
        The map's Series Number (one the study does not use).
    enhanced_series_uid
        The enhanced series the map belongs to, named in its Derivation Description.

    Raises
    ------
    ValueError
        As :func:`build_derived_series`, or for a negative or non-finite spread.
    """
    spread = np.asarray(spread, dtype=np.float64)
    if spread.size and (not np.isfinite(spread).all() or float(spread.min()) < 0.0):
        raise ValueError("an uncertainty map must be finite and non-negative")
    unit = "HU" if str(sources[0].get("Modality", "")).upper() == "CT" else "units"
    variant = ";".join(v for v in (info.variant, f"uncertainty-map;samples={samples}") if v)
    map_info = dataclasses.replace(
        info,
        preset=f"{info.preset} uncertainty"[:64],  # LO: its Series Description only
        variant=variant,
        description=(
            f"Uncertainty map, not an image of the patient: per pixel the standard deviation "
            f"({unit}) across {samples} samples of the model's full sampler drawn with other "
            f"seeds, for the enhanced series {enhanced_series_uid}. That series: "
            f"{info.description}"
        )[:1024],
        derivation_code=UNCERTAINTY_CODE,
        series_number=series_number,
    )
    datasets = build_derived_series(sources, np.zeros_like(spread), map_info, now)
    window = _window(spread)
    for ds, values in zip(datasets, spread, strict=True):
        _store_spread(ds, values, window)
    return datasets


def _window(spread: np.ndarray) -> float:
    """A window width showing the map's spread: its 99.5th percentile above zero."""
    positive = spread[spread > 0]
    top = float(np.percentile(positive, 99.5)) if positive.size else 1.0
    return max(round(top, 1), 1.0)


def _store_spread(ds: FileDataset, values: np.ndarray, width: float) -> None:
    for keyword in _SPREAD_ATTRIBUTES:
        if keyword in ds:
            delattr(ds, keyword)
    overlays = [e.tag for e in ds if 0x6000 <= e.tag.group <= 0x601E and e.tag.group % 2 == 0]
    for tag in overlays:  # overlay planes drawn on the source's pixels
        del ds[tag]
    stored = np.clip(np.rint(values / UNCERTAINTY_STEP), 0, 2**16 - 1).astype(np.uint16)
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{UNCERTAINTY_STEP:g}"
    ds.RescaleIntercept = "0"
    ds.WindowCenter = f"{width / 2:g}"
    ds.WindowWidth = f"{width:g}"
    ds.WindowCenterWidthExplanation = "UNCERTAINTY"
    ds.PixelData = stored.tobytes()
