"""Checks that a received dataset can be stored and understood, as C-STORE failure reasons."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

# Storage SOP classes whose instances carry a single-plane pixel module in Pixel Data.
_REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


def missing_identifiers(ds: Dataset) -> str | None:
    """The first missing or empty UID that the node needs to file the instance, if any."""
    for keyword in _REQUIRED_UIDS:
        if not str(ds.get(keyword, "") or "").strip():
            return f"{keyword} is missing or empty"
    return None


def is_image_storage(sop_class_uid: str) -> bool:
    """Whether the SOP class is an image storage class (its IOD has an Image Pixel module)."""
    return "Image Storage" in UID(sop_class_uid).name


def pixel_data_problem(ds: Dataset, transfer_syntax_uid: str) -> str | None:
    """Why the dataset's Pixel Data cannot be used, or None when it is complete.

    Only native (uncompressed) encodings are measured: their length is fixed by
    Rows x Columns x Samples per Pixel x Number of Frames x Bits Allocated (PS3.5 8.1.1).
    """
    if "PixelData" not in ds:
        return "the dataset has no Pixel Data (7FE0,0010)"
    if UID(transfer_syntax_uid).is_compressed:
        return None
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        return f"the Image Pixel module is incomplete: {exc}"
    n_bits = rows * columns * samples * frames * bits
    expected = (n_bits + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        return f"Pixel Data holds {actual} bytes, {expected} expected (truncated)"
    return None
