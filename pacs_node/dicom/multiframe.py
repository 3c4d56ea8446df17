"""Enhanced and Legacy Converted Enhanced CT and MR: one instance holds a whole stack of
frames, each with its geometry and rescale in the functional groups (PS3.3 C.7.6.16).

The node enhances such an instance when its frames form one volume: one orientation, one
pixel spacing, every frame at its own position along the normal (no second stack or time
point), grayscale. The frames are sorted along the normal for the model and written back
in their original order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
)

from pacs_node.dicom.codecs import DecodeError, pixel_array
from pacs_node.errors import InvalidSeriesError

#: Multi-frame storage SOP classes whose frames the node can enhance.
ENHANCEABLE_MULTIFRAME: frozenset[str] = frozenset(
    {
        EnhancedCTImageStorage,
        LegacyConvertedEnhancedCTImageStorage,
        EnhancedMRImageStorage,
        LegacyConvertedEnhancedMRImageStorage,
    }
)
_FRAME_TYPE = ("CTImageFrameTypeSequence", "MRImageFrameTypeSequence")


def frame_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword`` for frame ``frame`` (0-based):
    the frame's own, else the shared one, else None."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        sequence = per_frame[frame].get(keyword)
        if sequence:
            return sequence[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        sequence = shared[0].get(keyword)
        if sequence:
            return sequence[0]
    return None


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def multiframe_skip_reason(ds: Dataset) -> str | None:
    """Why an Enhanced CT/MR instance must not be enhanced (from its header), or None."""
    name = ds.SOPClassUID.name
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"{name} with PhotometricInterpretation {photometric or '(missing)'} is not enhanced"
    if int(ds.get("SamplesPerPixel", 1)) != 1 or int(ds.get("BitsAllocated", 16)) != 16:
        return f"{name}: only one 16-bit sample per pixel is enhanced"
    if str(ds.get("PixelPresentation", "MONOCHROME")).upper() == "COLOR":
        return f"{name} with Pixel Presentation COLOR (a parametric map) is not enhanced"
    frames = _frame_count(ds)
    if "PerFrameFunctionalGroupsSequence" not in ds or "SharedFunctionalGroupsSequence" not in ds:
        return f"{name} without functional groups"
    for frame in range(frames):
        for keyword in _FRAME_TYPE:
            item = frame_item(ds, frame, keyword)
            if item is not None and "LOCALIZER" in [str(v) for v in item.get("FrameType", [])]:
                return "localizer (scout) frames are not enhanced"
        if frame_item(ds, frame, "PlanePositionSequence") is None:
            return f"frame {frame + 1} has no Plane Position (Patient)"
        if frame_item(ds, frame, "PlaneOrientationSequence") is None:
            return f"frame {frame + 1} has no Plane Orientation (Patient)"
        if frame_item(ds, frame, "PixelMeasuresSequence") is None:
            return f"frame {frame + 1} has no Pixel Measures"
    return None


@dataclass(frozen=True)
class FrameStack:
    """The frames of one multi-frame instance as a volume sorted along the normal.

    ``values[k]`` is frame ``order[k]`` (0-based, in the instance) in modality values.
    """

    values: np.ndarray
    order: list[int]
    dataset: Dataset
    path: Path
    spacing_mm: tuple[float, float, float]


def frame_rescale(ds: Dataset, frame: int) -> tuple[float, float]:
    """(Rescale Slope, Rescale Intercept) of frame ``frame`` (0-based): its Pixel Value
    Transformation, else the top level, else the identity."""
    item = frame_item(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None else ds
    slope, intercept = source.get("RescaleSlope"), source.get("RescaleIntercept")
    slope_value = 1.0 if slope in (None, "") else float(slope)
    if slope_value == 0.0:
        raise InvalidSeriesError(f"frame {frame + 1} has Rescale Slope 0")
    return slope_value, 0.0 if intercept in (None, "") else float(intercept)


def load_frames(path: Path) -> FrameStack:
    """Read one Enhanced CT/MR instance into a volume sorted along its normal.

    Raises
    ------
    InvalidSeriesError
        Unreadable or undecodable, a reason from :func:`multiframe_skip_reason`, or frames
        that do not form one volume (several orientations or pixel spacings, two frames at
        one position: a second stack or time point).
    """
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InvalidSeriesError(f"{path}: unreadable DICOM file ({exc})") from exc
    reason = multiframe_skip_reason(ds)
    if reason is not None:
        raise InvalidSeriesError(f"{path}: {reason}")
    frames = _frame_count(ds)
    orientations, spacings, positions = set(), set(), []
    for frame in range(frames):
        orientation = frame_item(ds, frame, "PlaneOrientationSequence")
        measures = frame_item(ds, frame, "PixelMeasuresSequence")
        position = frame_item(ds, frame, "PlanePositionSequence")
        assert orientation is not None and measures is not None and position is not None
        orientations.add(tuple(round(float(v), 4) for v in orientation.ImageOrientationPatient))
        spacings.add(tuple(round(float(v), 6) for v in measures.PixelSpacing))
        positions.append([float(v) for v in position.ImagePositionPatient])
    if len(orientations) != 1 or len(spacings) != 1:
        raise InvalidSeriesError(
            f"{path}: frames have {len(orientations)} orientations and {len(spacings)} pixel "
            "spacings; one volume of parallel frames is needed"
        )
    [cosines], [(row_spacing, column_spacing)] = orientations, spacings
    normal = np.cross(np.array(cosines[:3]), np.array(cosines[3:]))
    distances = np.array(positions) @ normal
    order = [int(i) for i in np.argsort(distances, kind="stable")]
    steps = np.diff(distances[order])
    if frames > 1 and float(steps.min()) < 1e-3:
        raise InvalidSeriesError(
            f"{path}: two frames lie at the same position (several stacks or time points)"
        )
    try:
        stored = pixel_array(ds)
    except DecodeError as exc:
        raise InvalidSeriesError(f"{path}: pixel data cannot be decoded ({exc})") from exc
    stored = stored.reshape(frames, int(ds.Rows), int(ds.Columns))
    rescale = [frame_rescale(ds, frame) for frame in range(frames)]
    values = np.stack([stored[f].astype(np.float32) * rescale[f][0] + rescale[f][1] for f in order])
    slice_spacing = float(np.median(steps)) if frames > 1 else float(
        (frame_item(ds, 0, "PixelMeasuresSequence") or Dataset()).get("SliceThickness", 1.0)
        or 1.0
    )  # fmt: skip
    return FrameStack(values, order, ds, Path(path), (slice_spacing, row_spacing, column_spacing))


def is_multiframe_enhanceable(path: Path) -> bool:
    """Whether the file holds an Enhanced or Legacy Converted Enhanced CT/MR instance."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return False
    return str(ds.get("SOPClassUID", "")) in ENHANCEABLE_MULTIFRAME
