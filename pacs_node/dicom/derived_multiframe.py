"""The derived object of an Enhanced (or Legacy Converted Enhanced) CT/MR instance: the same
SOP class, one instance, the same frames in the same order with new pixels, and the
provenance in the functional groups (PS3.3 C.7.6.16.2.6 Derivation Image Macro).

Shares with :mod:`pacs_node.dicom.derived` the header copy, UIDs, labelling and the
mapping of modality values back to stored values.
"""

from __future__ import annotations

import copy
from datetime import datetime

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.sequence import Sequence as DicomSequence

from pacs_node.dicom.derived import (
    DerivationInfo,
    _carry_lossy_compression,
    _code_item,
    _copy_header,
    _da,
    _dt,
    _padding_range,
    _remove_private,
    _series_description,
    _stored_pixels,
    _tm,
    as_file,
    equipment_item,
    related_series_item,
    source_image_item,
)
from pacs_node.dicom.multiframe import frame_rescale
from pacs_node.dicom.uids import derived_series_uid, derived_sop_uid, device_uid

_FRAME_TYPES = ("CTImageFrameTypeSequence", "MRImageFrameTypeSequence")


def _derived_type(values: object) -> list[str]:
    """Image Type / Frame Type with value 1 DERIVED; the rest (PRIMARY, flavour, derived
    pixel contrast: PS3.3 C.8.16.1) kept."""
    kept = [str(v) for v in (values or [])]  # type: ignore[attr-defined]
    return ["DERIVED", *(kept[1:] or ["PRIMARY"])]


def build_derived_multiframe(
    source: Dataset,
    values: np.ndarray,
    info: DerivationInfo,
    now: datetime,
    source_stored: np.ndarray | None = None,
) -> FileDataset:
    """The derived instance of a multi-frame ``source``.

    Parameters
    ----------
    source
        The Enhanced or Legacy Converted Enhanced CT/MR instance, pixel data included.
    values
        Modality values (frames, Rows, Columns), in the source's frame order.
    info
        Provenance and labelling, as for single-frame series.
    now
        Creation time.
    source_stored
        The source's stored values (frames, Rows, Columns), to keep padding pixels; decoded
        from ``source`` when needed and not given.

    Raises
    ------
    ValueError
        ``values`` is not one frame per source frame on the source matrix.
    """
    frames, rows, columns = int(source.get("NumberOfFrames", 1)), int(source.Rows), int(
        source.Columns
    )  # fmt: skip
    if values.shape != (frames, rows, columns):
        raise ValueError(
            f"values have shape {values.shape}; expected {(frames, rows, columns)} (one per "
            "frame, same matrix: multi-frame objects are not resampled)"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError("values contain NaN or infinity")
    series_uid = derived_series_uid(
        source.SeriesInstanceUID, [str(source.SOPInstanceUID)], info.preset,
        f"{info.strength:g}", info.model_version, info.weights_sha256, info.variant,
    )  # fmt: skip
    date, time, date_time = _da(now), _tm(now), _dt(now)
    ds = _copy_header(source, 1)

    ds.SOPInstanceUID = derived_sop_uid(series_uid, source.SOPInstanceUID)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    contributing = [copy.deepcopy(i) for i in source.get("ContributingEquipmentSequence", [])]
    for item in contributing:
        _remove_private(item)
    equipment_uid = device_uid(info.model_name, info.model_version, info.weights_sha256)
    contributing.append(equipment_item(info, equipment_uid, date_time))
    ds.ContributingEquipmentSequence = DicomSequence(contributing)

    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = info.series_number
    ds.SeriesDescription = _series_description(source, info)
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.RelatedSeriesSequence = [related_series_item(source)]
    ds.ImageType = _derived_type(source.get("ImageType"))
    ds.ContentDate, ds.ContentTime = date, time
    # Enhanced IODs carry the derivation per frame, not at the top level.
    for keyword in ("DerivationDescription", "SourceImageSequence", "DerivationCodeSequence"):
        ds.pop(keyword, None)

    shared = ds.SharedFunctionalGroupsSequence[0]
    for keyword in _FRAME_TYPES:
        if keyword in shared:
            shared[keyword][0].FrameType = _derived_type(shared[keyword][0].get("FrameType"))
    per_frame = ds.PerFrameFunctionalGroupsSequence
    for index, item in enumerate(per_frame):
        for keyword in _FRAME_TYPES:
            if keyword in item:
                item[keyword][0].FrameType = _derived_type(item[keyword][0].get("FrameType"))
        derivation = Dataset()
        derivation.DerivationDescription = info.description
        derivation.DerivationCodeSequence = [_code_item(*info.derivation_code)]
        derivation.SourceImageSequence = [source_image_item(source, True, frame=index + 1)]
        item.DerivationImageSequence = [derivation]

    # Every instance the Source Image Sequences name, study and series first (C.8.15.2).
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = source.SOPClassUID
    referenced.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series_item = Dataset()
    series_item.SeriesInstanceUID = source.SeriesInstanceUID
    series_item.ReferencedSOPSequence = [referenced]
    evidence = Dataset()
    evidence.StudyInstanceUID = source.StudyInstanceUID
    evidence.ReferencedSeriesSequence = [series_item]
    ds.SourceImageEvidenceSequence = [evidence]

    # Image Pixel: 16 bits stored; each frame through its own rescale, padding kept.
    if source_stored is None and _padding_range(source) is not None:
        source_stored = source.pixel_array.reshape(frames, rows, columns)
    stored = []
    for index in range(frames):
        slope, intercept = frame_rescale(source, index)
        frame_stored = None if source_stored is None else source_stored[index]
        stored.append(_stored_pixels(source, index, values[index], slope, intercept, 1,
                                     frame_stored).tobytes())  # fmt: skip
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.add(DataElement(0x7FE00010, "OW", b"".join(stored)))
    _carry_lossy_compression(ds, source)
    return as_file(ds)
