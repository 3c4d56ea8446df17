"""Decide from headers whether a received instance or series may be enhanced."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedMRColorImageStorage,
    EnhancedPETImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MRImageStorage,
    PositronEmissionTomographyImageStorage,
)

from pacs_node.dicom.multiframe import ENHANCEABLE_MULTIFRAME, multiframe_skip_reason

__all__ = ["ENHANCEABLE_SOP_CLASSES", "series_skip_reason", "skip_reason"]

#: Single-frame image storage SOP classes whose pixels the node can enhance.
ENHANCEABLE_SOP_CLASSES: frozenset[str] = frozenset(
    {CTImageStorage, MRImageStorage, PositronEmissionTomographyImageStorage}
)

# Multi-frame image classes not enhanced (Enhanced CT and MR are: pacs_node/dicom/multiframe).
_MULTIFRAME_SOP_CLASSES: frozenset[str] = frozenset(
    {EnhancedMRColorImageStorage, EnhancedPETImageStorage, LegacyConvertedEnhancedPETImageStorage}
)


def _sop_class(ds: Dataset) -> UID | None:
    """Return the SOP Class UID, from the File Meta Information if the data set lacks it.

    A DICOMDIR has no SOPClassUID in its data set, only MediaStorageSOPClassUID (PS3.10 7.1).
    """
    value = ds.get("SOPClassUID")
    if not value:
        file_meta = getattr(ds, "file_meta", None)
        value = file_meta.get("MediaStorageSOPClassUID") if file_meta is not None else None
    return UID(str(value)) if value else None


def _sop_class_name(uid: UID) -> str:
    """Return pydicom's name of a SOP class, or the UID itself when pydicom does not know it."""
    return uid.name if uid.is_valid and uid.name != str(uid) else f"SOP Class {uid}"


def skip_reason(ds: Dataset) -> str | None:
    """Return why an instance must not be enhanced, or None when it may be.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        Header of the instance; pixel data is not needed (read with ``stop_before_pixels``).

    Returns
    -------
    str or None
        A human-readable reason (stored in the job row and shown on the dashboard), or
        None for a single-frame CT, MR or PET image with one grayscale sample per pixel.
    """
    sop_class = _sop_class(ds)
    if sop_class is None:
        return "instance has no SOP Class UID"
    name = _sop_class_name(sop_class)
    if sop_class in _MULTIFRAME_SOP_CLASSES:
        return f"multi-frame {name} is not supported yet"
    if sop_class in ENHANCEABLE_MULTIFRAME:
        return multiframe_skip_reason(ds)
    if sop_class not in ENHANCEABLE_SOP_CLASSES:
        return f"{name} is not an enhanceable image type"

    frames = ds.get("NumberOfFrames")
    if frames is not None and int(frames) > 1:
        return f"multi-frame {name} ({int(frames)} frames) is not supported yet"
    # Value 3 LOCALIZER marks a CT scout/topogram (PS3.3 C.8.2.1.1.1); MR localizers use
    # the same value by convention. A projection image is not part of the volume.
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if "LOCALIZER" in image_type:
        return "localizer (scout) images are not enhanced"
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return (
            f"PhotometricInterpretation {photometric or '(missing)'} is not supported; "
            "only MONOCHROME1/MONOCHROME2 images are enhanced"
        )
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        return f"SamplesPerPixel {samples} is not supported; only 1 sample per pixel"
    # CT, MR and PET Image modules fix Bits Allocated at 16 (PS3.3 C.8.2.1.1.4, C.8.3.1.1.4,
    # C.8.9.4.1.3); anything else would not survive being rewritten as a derived image.
    bits = ds.get("BitsAllocated")
    if bits is not None and int(bits) != 16:
        return f"BitsAllocated {int(bits)} is not supported for {name}; expected 16"
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        return "instance has no image plane geometry (ImageOrientationPatient/Position)"
    return None


def produced_by(ds: Dataset, manufacturer: str) -> bool:
    """Whether ``ds`` is an output of a node with this equipment ``manufacturer``.

    The node records itself as Processing Equipment (109102, DCM) in the Contributing
    Equipment Sequence (PS3.3 C.12.1.1); a PACS that routes a derived series back to the
    node must not get it enhanced a second time.
    """
    for item in ds.get("ContributingEquipmentSequence", []):
        purposes = item.get("PurposeOfReferenceCodeSequence", [])
        processing = any(code.get("CodeValue") == "109102" for code in purposes)
        if processing and str(item.get("Manufacturer", "")) == manufacturer:
            return True
    return False


def series_skip_reason(
    headers: Sequence[Dataset], own_manufacturer: str | None = None
) -> str | None:
    """Return why a series must not be enhanced, or None when all its instances may be.

    Parameters
    ----------
    headers : Sequence[pydicom.dataset.Dataset]
        Headers of every instance of one series.
    own_manufacturer : str, optional
        This node's equipment manufacturer: its own derived series are skipped.

    Returns
    -------
    str or None
        The reason for the whole series: no instances, several series or SOP classes mixed,
        or the first reason found among its instances (with a count when only some
        instances have it); None when every instance is enhanceable.
    """
    if not headers:
        return "series has no instances"
    series_uids = {str(ds.get("SeriesInstanceUID", "")) for ds in headers}
    if len(series_uids) > 1:
        return f"instances of {len(series_uids)} different series were mixed"
    sop_classes = {_sop_class(ds) for ds in headers}
    if len(sop_classes) > 1:
        names = sorted(
            _sop_class_name(uid) if uid is not None else "(no SOP Class UID)" for uid in sop_classes
        )
        return f"series mixes SOP classes: {', '.join(names)}"
    if len(headers) > 1 and any(_sop_class(ds) in ENHANCEABLE_MULTIFRAME for ds in headers):
        return (
            f"series holds {len(headers)} multi-frame instances; one volume per series is enhanced"
        )
    if own_manufacturer and any(produced_by(ds, own_manufacturer) for ds in headers):
        return f"series is already a derived series of {own_manufacturer}; not enhanced again"
    reasons = [reason for reason in (skip_reason(ds) for ds in headers) if reason is not None]
    if not reasons:
        return None
    if len(reasons) == len(headers):
        return reasons[0]
    return f"{len(reasons)} of {len(headers)} instances cannot be enhanced: {reasons[0]}"
