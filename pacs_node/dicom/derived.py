"""Build the derived (enhanced) series from a source series and the model's output values."""

from __future__ import annotations

import copy
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import Collection as CodeCollection
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from pydicom.valuerep import format_number_as_ds

from pacs_node.dicom.classify import skip_reason
from pacs_node.dicom.codecs import LOSSY_METHODS
from pacs_node.dicom.uids import derived_series_uid, derived_sop_uid, device_uid

__all__ = [
    "PROCESSING_EQUIPMENT",
    "SMOOTHING",
    "SOURCE_IMAGE_PURPOSE",
    "SOURCE_SERIES_PURPOSE",
    "SPATIAL_RESAMPLING",
    "DerivationInfo",
    "build_derived_series",
    "choose_series_number",
    "derivation_code_for_task",
]

#: (113087, DCM, "Smoothing") from CID 7203 Image Derivation: the closest standard concept
#: to model-based denoising (CID 7203 has no "denoising" code).
SMOOTHING: tuple[str, str, str] = (
    codes.DCM.Smoothing.value,
    codes.DCM.Smoothing.scheme_designator,
    codes.DCM.Smoothing.meaning,
)
#: (113085, DCM, "Spatial resampling") from CID 7203 Image Derivation: a change of the
#: pixel grid (super-resolution); CID 7203 has no "super-resolution" or "interpolation" code.
SPATIAL_RESAMPLING: tuple[str, str, str] = (
    codes.DCM.SpatialResampling.value,
    codes.DCM.SpatialResampling.scheme_designator,
    codes.DCM.SpatialResampling.meaning,
)
#: (121322, DCM) CID 7202 Source Image Purposes of Reference.
SOURCE_IMAGE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation
#: (121323, DCM) CID 7210 Related Series Purposes of Reference.
SOURCE_SERIES_PURPOSE = codes.DCM.SourceSeriesForImageProcessingOperation
#: (109102, DCM) CID 7005 Contributing Equipment Purposes of Reference.
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment

_IS_MIN, _IS_MAX = -(2**31), 2**31 - 1  # IS value range (PS3.5 6.2)
_US_MAX = 2**16 - 1  # Rows and Columns are US (PS3.5 6.2)
_LO_MAX, _SH_MAX, _ST_MAX = 64, 16, 1024  # characters (PS3.5 6.2)
_TEMPLATE_FIELDS = ("source", "preset", "model", "version")
# Default character repertoire without backslash (the value delimiter) or controls (PS3.5 6.1).
_LO_TEXT = re.compile(r"[ -\[\]-~]*")
# ST may also hold CR, LF, FF and backslash (PS3.5 6.2).
_ST_TEXT = re.compile(r"[ -~\r\n\f]*")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

# Attributes no longer true of the new pixels or of the new instance, removed from copies:
_DROPPED_KEYWORDS = (
    "PixelData",
    # Pixel statistics of the old pixels (PS3.3 C.7.6.3, C.7.3.1).
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    # A thumbnail of the old pixels (PS3.3 C.7.6.1.1.6).
    "IconImageSequence",
    # Signatures over the old data set would not verify (PS3.3 C.12.1.1.3).
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "EncryptedAttributesSequence",
    # The source's own derivation history is replaced by this derivation (PS3.3 C.7.6.1).
    "SourceImageSequence",
    "DerivationCodeSequence",
    "RelatedSeriesSequence",
    # Identify the creator/status of the source instance, not of the new one (PS3.3 C.12.1).
    "InstanceCreatorUID",
    "SOPInstanceStatus",
    "SOPAuthorizationDateTime",
    "SOPAuthorizationComment",
    "AuthorizationEquipmentCertificationNumber",
    "DataSetTrailingPadding",
    "PixelDataProviderURL",
    "StorageMediaFileSetID",
    "StorageMediaFileSetUID",
)

# CID 7203 Image Derivation code per model task (models.base.ModelInfo.task).
_TASK_DERIVATION_CODES: dict[str, tuple[str, str, str]] = {
    # No "noise reduction" concept in CID 7203; Smoothing is the closest for denoisers,
    # diffusion-based restoration included, and for the identity (test) model.
    "denoise": SMOOTHING,
    "diffusion": SMOOTHING,
    "identity": SMOOTHING,
    # A new, finer pixel grid over the same field of view.
    "super_resolution": SPATIAL_RESAMPLING,
}

# Display Shutter attributes (PS3.3 C.7.6.11): edges, centre, radius and vertices are given
# in pixel coordinates (row\column, 1\1 the top left pixel) of the source grid.
_SHUTTER_KEYWORDS = (
    "ShutterShape",
    "ShutterLeftVerticalEdge",
    "ShutterRightVerticalEdge",
    "ShutterUpperHorizontalEdge",
    "ShutterLowerHorizontalEdge",
    "CenterOfCircularShutter",
    "RadiusOfCircularShutter",
    "VerticesOfThePolygonalShutter",
    "ShutterPresentationValue",
    "ShutterPresentationColorCIELabValue",
    "ShutterOverlayGroup",
)


@lru_cache(maxsize=1)
def _cid7203_dcm_codes() -> dict[str, str]:
    """Return CodeValue -> CodeMeaning of the DCM concepts of CID 7203 Image Derivation."""
    concepts = CodeCollection("CID7203").concepts
    return {c.value: c.meaning for c in concepts.values() if c.scheme_designator == "DCM"}


def derivation_code_for_task(task: str) -> tuple[str, str, str]:
    """Return the CID 7203 Image Derivation code for what a model of ``task`` does.

    Parameters
    ----------
    task : str
        Model task: ``"denoise"``, ``"diffusion"``, ``"identity"`` (all
        :data:`SMOOTHING`) or ``"super_resolution"`` (:data:`SPATIAL_RESAMPLING`).

    Returns
    -------
    tuple of str
        (CodeValue, CodingSchemeDesignator, CodeMeaning) for
        :attr:`DerivationInfo.derivation_code`.

    Raises
    ------
    ValueError
        If ``task`` is not one of the known tasks.
    """
    try:
        return _TASK_DERIVATION_CODES[task]
    except (KeyError, TypeError):
        raise ValueError(
            f"task must be one of {sorted(_TASK_DERIVATION_CODES)}, got {task!r}"
        ) from None


def _check_text(name: str, value: str, pattern: re.Pattern[str], max_len: int) -> None:
    """Raise ValueError unless ``value`` is a non-empty valid DICOM text of ``max_len``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise ValueError(f"{name} must be at most {max_len} characters, got {len(value)}")
    if not pattern.fullmatch(value):
        raise ValueError(
            f"{name} must use printable ASCII without backslash or control characters, "
            f"got {value!r}"
        )


@dataclass(frozen=True)
class DerivationInfo:
    """What was done to the pixels and by which equipment; validated on construction.

    Attributes
    ----------
    preset : str
        Enhancement preset name; part of the derived UIDs.
    model_name : str
        Model registry name; part of the DeviceUID.
    model_version : str
        Model version; part of the derived UIDs and of the DeviceUID.
    weights_sha256 : str
        Hex SHA-256 (64 characters) of the weights; part of the derived UIDs and of the
        DeviceUID.
    description : str
        Derivation Description (0008,2111), ST, at most 1024 characters.
    derivation_code : tuple of str
        (CodeValue, CodingSchemeDesignator, CodeMeaning) for Derivation Code Sequence
        (0008,9215), CID 7203 Image Derivation, e.g. :data:`SMOOTHING`. A DCM code must be
        one of CID 7203 with its meaning; other schemes are accepted (CID 7203 is
        extensible).
    series_description_template : str
        Template of Series Description (0008,103E) with the placeholders ``{source}``
        (source SeriesDescription), ``{preset}``, ``{model}`` and ``{version}``.
    series_number : int
        Series Number (0020,0011) of the derived series, see :func:`choose_series_number`.
    manufacturer : str
        Manufacturer (0008,0070) of the node, for Contributing Equipment Sequence.
    equipment_model_name : str
        Manufacturer's Model Name (0008,1090) of the node.
    software_versions : str
        Software Versions (0018,1020) of the node.
    strength : float
        The share of the model's change applied (1: all of it); part of the derived UIDs.
    variant : str
        Anything else the pixels depend on (:attr:`ModelInfo.variant`, the uncertainty
        map); part of the derived UIDs when not empty.
    """

    preset: str
    model_name: str
    model_version: str
    weights_sha256: str
    description: str
    derivation_code: tuple[str, str, str]
    series_description_template: str
    series_number: int
    manufacturer: str
    equipment_model_name: str
    software_versions: str
    strength: float = 1.0
    variant: str = ""

    def __post_init__(self) -> None:
        """Check every field against its DICOM value representation."""
        for name in ("preset", "model_name", "model_version"):
            _check_text(name, getattr(self, name), _LO_TEXT, _LO_MAX)
        for name in ("manufacturer", "equipment_model_name", "software_versions"):
            _check_text(name, getattr(self, name), _LO_TEXT, _LO_MAX)
        _check_text("description", self.description, _ST_TEXT, _ST_MAX)
        if not isinstance(self.weights_sha256, str) or not _SHA256.fullmatch(self.weights_sha256):
            raise ValueError(
                f"weights_sha256 must be 64 hexadecimal digits, got {self.weights_sha256!r}"
            )
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be within [0, 1], got {self.strength}")
        self._check_derivation_code()
        try:
            self.series_description_template.format(**dict.fromkeys(_TEMPLATE_FIELDS, "x"))
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            raise ValueError(
                "series_description_template may use only the placeholders "
                f"{{source}}, {{preset}}, {{model}}, {{version}}; "
                f"{self.series_description_template!r} fails: {exc!r}"
            ) from exc
        if (
            isinstance(self.series_number, bool)
            or not isinstance(self.series_number, int)
            or not 0 <= self.series_number <= _IS_MAX
        ):
            raise ValueError(
                f"series_number must be an int in 0..{_IS_MAX} (IS), got {self.series_number!r}"
            )

    def _check_derivation_code(self) -> None:
        """Check the code triple's VRs (SH, SH, LO) and, for DCM, its CID 7203 membership."""
        if not isinstance(self.derivation_code, tuple) or len(self.derivation_code) != 3:
            raise ValueError(
                "derivation_code must be (CodeValue, CodingSchemeDesignator, CodeMeaning), "
                f"got {self.derivation_code!r}"
            )
        value, scheme, meaning = self.derivation_code
        _check_text("derivation_code CodeValue", value, _LO_TEXT, _SH_MAX)
        _check_text("derivation_code CodingSchemeDesignator", scheme, _LO_TEXT, _SH_MAX)
        _check_text("derivation_code CodeMeaning", meaning, _LO_TEXT, _LO_MAX)
        if scheme == "DCM":
            known = _cid7203_dcm_codes()
            if value not in known:
                raise ValueError(
                    f"derivation_code ({value}, DCM) is not in CID 7203 Image Derivation"
                )
            if known[value].casefold() != meaning.casefold():
                raise ValueError(
                    f"derivation_code ({value}, DCM) means {known[value]!r}, not {meaning!r}"
                )


def choose_series_number(source_number: int | None, used: Collection[int], offset: int) -> int:
    """Return a Series Number for the derived series that no series of the study uses.

    Parameters
    ----------
    source_number : int or None
        Series Number of the source series (Type 2, may be empty: PS3.3 C.7.3.1).
    used : Collection[int]
        Series Numbers already present in the study.
    offset : int
        Added to the source number (or to 0 when it is empty); at least 1.

    Returns
    -------
    int
        ``source_number + offset``, increased by one until it is neither used nor the
        source number.

    Raises
    ------
    ValueError
        If ``offset`` is below 1 or no free number fits the IS range (at most 2**31 - 1).
    """
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 1:
        raise ValueError(f"offset must be an int >= 1, got {offset!r}")
    taken = set(used)
    if source_number is not None:
        taken.add(source_number)
    candidate = (source_number or 0) + offset
    candidate = max(candidate, 0)
    while candidate in taken:
        candidate += 1
    if candidate > _IS_MAX:
        raise ValueError(
            f"no free series number between {(source_number or 0) + offset} and {_IS_MAX} "
            "(IS range); lower the offset"
        )
    return candidate


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """Return one Code Sequence Macro item (PS3.3 8.8, Table 8.8-1)."""
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def _remove_private(ds: Dataset) -> None:
    """Remove private elements at every nesting level (PS3.5 7.8).

    Vendor reconstruction data (kernels, raw-data offsets, ...) describes the old pixels.
    """
    ds.remove_private_tags()
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _remove_private(item)


def _is_overlay(tag: int) -> bool:
    """Whether ``tag`` belongs to an Overlay Plane repeating group 6000-601E (PS3.3 C.9.2)."""
    group = tag >> 16
    return 0x6000 <= group <= 0x601E and group % 2 == 0


def _copy_header(source: Dataset, scale: int) -> Dataset:
    """Return a deep copy of ``source`` without pixel data and the dropped attributes.

    With ``scale`` > 1 the pixel grid changes, so attributes addressing source pixels by
    row/column are dropped as well: Overlay Planes (Overlay Rows/Columns/Origin and a
    bitmap in the source matrix, PS3.3 C.9.2.1.1) and Display Shutters (C.7.6.11). Physical
    attributes stay true of the same field of view: Pixel Aspect Ratio (equal scale on both
    axes, C.7.6.3.1.7), Reconstruction Diameter, Acquisition Matrix (of the acquisition,
    not of the image), Referenced Image Sequence (whole instances, no pixel coordinates).
    Other pixel-coordinate attributes (ultrasound regions, mask pixel shifts, Imager Pixel
    Spacing) belong to IODs that :func:`skip_reason` does not admit.
    """
    out = Dataset()
    dropped = {kw for kw in _DROPPED_KEYWORDS if kw in source}
    if scale > 1:
        dropped.update(kw for kw in _SHUTTER_KEYWORDS if kw in source)
    for elem in source:
        if elem.keyword in dropped or (scale > 1 and _is_overlay(elem.tag)):
            continue
        out.add(copy.deepcopy(elem))
    _remove_private(out)
    return out


def _da(now: datetime) -> str:
    return now.strftime("%Y%m%d")


def _tm(now: datetime) -> str:
    return now.strftime("%H%M%S.%f")


def _dt(now: datetime) -> str:
    # DT may carry the UTC offset when ``now`` is timezone-aware (PS3.5 6.2).
    return now.strftime("%Y%m%d%H%M%S.%f") + now.strftime("%z")


def _series_description(source: Dataset, info: DerivationInfo) -> str:
    """Format the template and fit it to LO: 64 characters, no backslash or controls."""
    raw = source.get("SeriesDescription", "") or ""
    # A stray backslash in a source's LO reads as several values (PS3.5 6.4): rejoin them.
    source_text = "/".join(str(v) for v in raw) if isinstance(raw, MultiValue) else str(raw)
    text = info.series_description_template.format(
        source=source_text,
        preset=info.preset,
        model=info.model_name,
        version=info.model_version,
    )
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text.replace("\\", "/")).strip()
    return text[:_LO_MAX].rstrip() or info.preset


def _rescale(source: Dataset, index: int) -> tuple[float, float]:
    """Return (slope, intercept) of the Modality LUT (PS3.3 C.11.1); identity if absent."""
    if "ModalityLUTSequence" in source:
        raise ValueError(
            f"sources[{index}] uses a Modality LUT Sequence; only RescaleSlope/Intercept "
            "can be inverted"
        )
    # Absent or empty (Type 1 for CT, absent for MR): the identity transform.
    raw_slope, raw_intercept = source.get("RescaleSlope"), source.get("RescaleIntercept")
    slope = 1.0 if raw_slope is None or raw_slope == "" else float(raw_slope)
    intercept = 0.0 if raw_intercept is None or raw_intercept == "" else float(raw_intercept)
    if slope == 0.0:
        raise ValueError(f"sources[{index}] has RescaleSlope 0, which cannot be inverted")
    return slope, intercept


def _padding_range(source: Dataset) -> tuple[int, int] | None:
    """Return the stored-value range marked as padding (PS3.3 C.7.5.1.1.2), or None."""
    pad = source.get("PixelPaddingValue")
    if pad is None:
        return None
    limit = source.get("PixelPaddingRangeLimit")
    if limit is None:
        return int(pad), int(pad)
    return min(int(pad), int(limit)), max(int(pad), int(limit))


def _stored_pixels(
    source: Dataset,
    index: int,
    frame: np.ndarray,
    slope: float,
    intercept: float,
    scale: int,
    source_stored: np.ndarray | None = None,
) -> np.ndarray:
    """Return the stored values of one output slice with 16 bits stored.

    Values are mapped back through the source's rescale so modality values (HU) keep their
    meaning, rounded and clipped to the range of PixelRepresentation with Bits Stored 16.
    Source padding pixels stay padding, through nearest-neighbour upsampling of the padding
    mask by ``scale`` (each source pixel becomes ``scale`` x ``scale`` output pixels); other
    pixels are kept out of the padding range.
    """
    signed = int(source.PixelRepresentation) == 1
    low, high = (-(2**15), 2**15 - 1) if signed else (0, 2**16 - 1)
    stored = np.rint((frame.astype(np.float64) - intercept) / slope)
    stored = np.clip(stored, low, high).astype(np.int32)

    padding = _padding_range(source)
    if padding is not None:
        if "PixelData" not in source:
            raise ValueError(
                f"sources[{index}] has PixelPaddingValue but no PixelData; pass full data "
                "sets so padding pixels can be kept"
            )
        src = (source.pixel_array if source_stored is None else source_stored).astype(np.int32)
        if scale > 1:
            src = np.repeat(np.repeat(src, scale, axis=0), scale, axis=1)
        pad_low, pad_high = padding
        is_padding = (src >= pad_low) & (src <= pad_high)
        stored[is_padding] = src[is_padding]
        # A real pixel must not become padding (PS3.3 C.7.5.1.1.2): move it just outside.
        collide = ~is_padding & (stored >= pad_low) & (stored <= pad_high)
        stored[collide] = pad_high + 1 if pad_high + 1 <= high else pad_low - 1
    return stored.astype("<i2" if signed else "<u2")


def _scale(sources: Sequence[Dataset], values: np.ndarray) -> int:
    """Return the in-plane scale s of ``values`` over the source matrix, or raise ValueError."""
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if rows < 1 or columns < 1:
        raise ValueError(f"sources[0] has Rows {rows} and Columns {columns}; both must be >= 1")
    rule = (
        f"values must have shape (len(sources), Rows, Columns) = "
        f"{(len(sources), rows, columns)}, or (len(sources), Rows*s, Columns*s) with one "
        "integer scale s >= 2 on both axes"
    )
    if values.ndim != 3 or values.shape[0] != len(sources):
        raise ValueError(f"{rule}; got {values.shape}")
    out_rows, out_columns = int(values.shape[1]), int(values.shape[2])
    if (
        out_rows < rows
        or out_rows % rows
        or out_columns % columns
        or out_rows // rows != out_columns // columns
    ):
        raise ValueError(
            f"{rule}; got {values.shape}: Rows x {out_rows / rows:g}, "
            f"Columns x {out_columns / columns:g}"
        )
    scale = out_rows // rows
    if max(out_rows, out_columns) > _US_MAX:
        raise ValueError(
            f"values gives {out_rows} Rows and {out_columns} Columns at scale {scale}; "
            f"both must be at most {_US_MAX} (US)"
        )
    if scale > 1:
        for index, source in enumerate(sources):
            if len(source.get("PixelSpacing") or []) != 2:
                raise ValueError(
                    f"sources[{index}] has no PixelSpacing (two values); it is needed to "
                    f"resample the image plane to scale {scale}"
                )
    return scale


def _resampled_plane(source: Dataset, scale: int) -> tuple[list[str], list[str]]:
    """Return (ImagePositionPatient, PixelSpacing) as DS strings for the grid refined ``scale``.

    PS3.3 C.7.6.2.1.1 maps pixel (column i, row j), 0-based, to the patient position
    P = S + i * Di * X + j * Dj * Y, where S is Image Position (Patient), the centre of the
    first transmitted pixel; X = IOP[0:3] the row direction (along which i steps) and
    Y = IOP[3:6] the column direction (along which j steps); Di the column spacing =
    PixelSpacing[1] and Dj the row spacing = PixelSpacing[0] (Pixel Spacing is "adjacent
    row spacing \\ adjacent column spacing", PS3.3 10.7.1.3).

    A pixel is the area within half a step of its centre, so the outer corner of the field
    of view is C = S - (Di/2) X - (Dj/2) Y. The refined grid keeps that corner and the
    extent, with steps Di/s and Dj/s, so its first pixel centre is
        S' = C + (Di/(2s)) X + (Dj/(2s)) Y = S - (Di/2)(1 - 1/s) X - (Dj/2)(1 - 1/s) Y.
    Its last pixel edge along X lies at S' + (s*Columns - 1/2)(Di/s) X = S + (Columns - 1/2)
    Di X, as before, so the corners and the centre of the image do not move. This is the
    grid of "half-pixel" upsampling (PyTorch ``align_corners=False``, pixel shuffle), the
    convention the model outputs must follow.
    """
    x = np.array([float(v) for v in source.ImageOrientationPatient[0:3]])
    y = np.array([float(v) for v in source.ImageOrientationPatient[3:6]])
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    position = np.array([float(v) for v in source.ImagePositionPatient])
    shrink = 1.0 - 1.0 / scale
    position = position - (column_spacing / 2) * shrink * x - (row_spacing / 2) * shrink * y
    # DS holds at most 16 characters (PS3.5 6.2); format_number_as_ds keeps the precision.
    spacing = [
        format_number_as_ds(row_spacing / scale),
        format_number_as_ds(column_spacing / scale),
    ]
    return [format_number_as_ds(float(v)) for v in position], spacing


def _check_sources(sources: Sequence[Dataset], values: np.ndarray) -> int:
    """Return the in-plane scale of ``values``; raise ValueError naming the broken constraint."""
    _check_source_headers(sources)
    scale = _scale(sources, values)
    _check_values(values)
    return scale


def _check_values(values: np.ndarray) -> None:
    """Raise ValueError unless ``values`` are real numbers, all finite."""
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
        values.dtype, np.complexfloating
    ):
        raise ValueError(f"values must be a real numeric array, got dtype {values.dtype}")
    if not np.isfinite(values).all():
        raise ValueError("values must be finite (no NaN or infinity)")


def _check_source_headers(sources: Sequence[Dataset]) -> None:
    """Raise ValueError unless ``sources`` form one enhanceable series."""
    if len(sources) == 0:
        raise ValueError("sources must contain at least one dataset")
    first = sources[0]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "Rows", "Columns"):
        if keyword not in first:
            raise ValueError(f"sources[0] has no {keyword}")
    for index, source in enumerate(sources):
        reason = skip_reason(source)
        if reason is not None:
            raise ValueError(f"sources[{index}] cannot be enhanced: {reason}")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "Rows", "Columns"):
            if source.get(keyword) != first.get(keyword):
                raise ValueError(
                    f"sources must share {keyword}; sources[{index}] has "
                    f"{source.get(keyword)!r}, sources[0] has {first.get(keyword)!r}"
                )


def source_image_item(source: Dataset, preserved: bool, frame: int | None = None) -> Dataset:
    """A Source Image Sequence item: the source instance (and frame, 1-based), the purpose
    of reference, and whether spatial locations are preserved (PS3.3 C.7.6.1.1.4)."""
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        reference.ReferencedFrameNumber = frame
    reference.PurposeOfReferenceCodeSequence = [
        _code_item(
            SOURCE_IMAGE_PURPOSE.value,
            SOURCE_IMAGE_PURPOSE.scheme_designator,
            SOURCE_IMAGE_PURPOSE.meaning,
        )
    ]
    reference.SpatialLocationsPreserved = "YES" if preserved else "NO"
    return reference


def related_series_item(source: Dataset) -> Dataset:
    """Related Series Sequence item pointing at the source series (PS3.3 C.7.3.1)."""
    related = Dataset()
    related.StudyInstanceUID = source.StudyInstanceUID
    related.SeriesInstanceUID = source.SeriesInstanceUID
    related.PurposeOfReferenceCodeSequence = [
        _code_item(
            SOURCE_SERIES_PURPOSE.value,
            SOURCE_SERIES_PURPOSE.scheme_designator,
            SOURCE_SERIES_PURPOSE.meaning,
        )
    ]
    return related


def equipment_item(info: DerivationInfo, equipment_uid: str, date_time: str) -> Dataset:
    """The node's Contributing Equipment Sequence item (PS3.3 C.12.1.1.1)."""
    equipment = Dataset()
    equipment.PurposeOfReferenceCodeSequence = [
        _code_item(
            PROCESSING_EQUIPMENT.value,
            PROCESSING_EQUIPMENT.scheme_designator,
            PROCESSING_EQUIPMENT.meaning,
        )
    ]
    equipment.Manufacturer = info.manufacturer
    equipment.ManufacturerModelName = info.equipment_model_name
    equipment.SoftwareVersions = info.software_versions
    equipment.DeviceUID = equipment_uid
    equipment.ContributionDateTime = date_time
    strength = f", strength {info.strength:.0%}" if info.strength < 1.0 else ""
    equipment.ContributionDescription = (
        f"{info.model_name} {info.model_version}, preset {info.preset}{strength}"
    )[:_ST_MAX]
    return equipment


def _carry_lossy_compression(ds: Dataset, source: Dataset) -> None:
    """Once lossy, always marked (PS3.3 C.7.6.1.1.5): a source whose pixels were lossy
    compressed, by its own history or by the transfer syntax it arrived in, makes the
    derived instance say so, with each step's ratio and method."""
    syntax = str(getattr(source, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    ratios = [str(v) for v in _values(source.get("LossyImageCompressionRatio"))]
    methods = [str(v) for v in _values(source.get("LossyImageCompressionMethod"))]
    lossy = source.get("LossyImageCompression") == "01"
    method = LOSSY_METHODS.get(syntax)
    if method is not None:
        lossy = True
        if not methods or methods[-1] != method:  # the sender did not record this step
            frames = int(source.get("NumberOfFrames", 1) or 1)
            native = int(source.Rows) * int(source.Columns) * frames * int(source.BitsAllocated)
            native *= int(source.get("SamplesPerPixel", 1) or 1)
            ratios.append(f"{native / 8 / max(len(source.PixelData), 1):.2f}"[:16])
            methods.append(method)
    if not lossy:
        return
    ds.LossyImageCompression = "01"
    if ratios:
        ds.LossyImageCompressionRatio = ratios
    if methods:
        ds.LossyImageCompressionMethod = methods


def _values(value: object) -> list[object]:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple | MultiValue) else [value]


def build_derived_series(
    sources: Sequence[Dataset], values: np.ndarray, info: DerivationInfo, now: datetime
) -> list[FileDataset]:
    """Return the derived series: one new instance per source instance, same order.

    Each instance keeps the patient, study, frame of reference, image plane, acquisition
    and VOI attributes of its source, gets new deterministic Series/SOP Instance UIDs,
    ImageType DERIVED\\SECONDARY, derivation and source references, a Contributing
    Equipment item for this node, and the new pixels stored through the source's
    Rescale Slope/Intercept with 16 bits stored.

    Super-resolution output, ``scale`` s = values.shape[1] / Rows >= 2, gets Rows and
    Columns times s, Pixel Spacing divided by s and Image Position (Patient) moved to the
    centre of the new first pixel, so the field of view and its centre are unchanged;
    Spatial Locations Preserved is NO, and overlays and display shutters in source pixel
    coordinates are dropped.

    Parameters
    ----------
    sources : Sequence[pydicom.dataset.Dataset]
        Full datasets (with PixelData when PixelPaddingValue is used) of one enhanceable
        series, e.g. :attr:`SeriesVolume.datasets`.
    values : numpy.ndarray
        Real array (len(sources), Rows, Columns), or (len(sources), Rows*s, Columns*s)
        with one integer s >= 2 for super-resolution, of modality values (HU for CT),
        ``values[k]`` belonging to ``sources[k]``. Upsampled pixels must follow the
        half-pixel grid convention: output pixel centres at source pixel coordinates
        (m + 1/2)/s - 1/2 for output index m, the same outer edges.
    info : DerivationInfo
        What was done and by which equipment.
    now : datetime.datetime
        Creation time written to InstanceCreation, Content, Series and Contribution
        date/time.

    Returns
    -------
    list of pydicom.dataset.FileDataset
        Instances with Explicit VR Little Endian file meta, ready for ``save_as`` with
        ``enforce_file_format=True`` or for C-STORE.

    Raises
    ------
    ValueError
        If ``sources`` is empty, mixes series, studies, SOP classes or matrix sizes,
        holds an instance that cannot be enhanced, or ``values`` has the wrong shape (not
        the source matrix or one integer multiple of it on both axes) or non-finite
        values, or a super-resolution source has no Pixel Spacing.
    """
    values = np.asarray(values)
    scale = _check_sources(sources, values)
    builder = DerivedSeriesBuilder(sources, info, now, scale)
    return [builder.build(index, values[index]) for index in range(len(sources))]


class DerivedSeriesBuilder:
    """What :func:`build_derived_series` does, one instance at a time: the series-level
    parts (UIDs, description, equipment, times) are fixed here, so instances built as
    their slices are ready (:meth:`build`) equal those of one call over the whole volume.

    ``sources`` are checked as :func:`build_derived_series` checks them (ValueError);
    ``scale`` is the in-plane scale of the values (1, or an integer ≥ 2 for
    super-resolution), and :meth:`check_slice` checks each slice against it.
    """

    def __init__(
        self, sources: Sequence[Dataset], info: DerivationInfo, now: datetime, scale: int
    ) -> None:
        _check_source_headers(sources)
        first = sources[0]
        self.sources = sources
        self.info = info
        self.scale = scale
        self.series_uid = derived_series_uid(
            first.SeriesInstanceUID,
            [str(source.SOPInstanceUID) for source in sources],
            info.preset,
            f"{info.strength:g}",
            info.model_version,
            info.weights_sha256,
            info.variant,
        )
        equipment_uid = device_uid(info.model_name, info.model_version, info.weights_sha256)
        self.description = _series_description(first, info)
        self.date, self.time, date_time = _da(now), _tm(now), _dt(now)
        self.related = related_series_item(first)
        self.equipment = equipment_item(info, equipment_uid, date_time)

    def check_slice(self, index: int, frame: np.ndarray) -> None:
        """Raise ValueError unless ``frame`` fits slice ``index`` (its grid, finite)."""
        source = self.sources[index]
        expected = (int(source.Rows) * self.scale, int(source.Columns) * self.scale)
        if frame.shape != expected:
            raise ValueError(f"values[{index}] has shape {frame.shape}; expected {expected}")
        _check_values(frame)

    def build(self, index: int, frame: np.ndarray) -> FileDataset:
        """The derived instance of ``sources[index]`` with the modality values ``frame``."""
        info, scale = self.info, self.scale
        source = self.sources[index]
        series_uid, date, time = self.series_uid, self.date, self.time
        description, related, equipment = self.description, self.related, self.equipment
        slope, intercept = _rescale(source, index)
        ds = _copy_header(source, scale)

        # SOP Common (PS3.3 C.12.1): same SOP class, new instance.
        ds.SOPInstanceUID = derived_sop_uid(series_uid, source.SOPInstanceUID)
        ds.InstanceCreationDate = date
        ds.InstanceCreationTime = time
        contributing = [
            copy.deepcopy(item) for item in source.get("ContributingEquipmentSequence", [])
        ]
        for item in contributing:
            _remove_private(item)
        contributing.append(copy.deepcopy(equipment))
        ds.ContributingEquipmentSequence = DicomSequence(contributing)

        # General Series (PS3.3 C.7.3.1): a new series in the same study.
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = info.series_number
        ds.SeriesDescription = description
        ds.SeriesDate = date
        ds.SeriesTime = time
        ds.RelatedSeriesSequence = [copy.deepcopy(related)]

        # General Image (PS3.3 C.7.6.1): Image Type value 1 DERIVED, value 2 SECONDARY
        # (C.7.6.1.1.2); values 3+ (AXIAL/LOCALIZER for CT, C.8.2.1.1.1) kept.
        image_type = [str(v) for v in source.get("ImageType", [])]
        ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
        ds.ContentDate = date
        ds.ContentTime = time
        ds.DerivationDescription = info.description
        ds.DerivationCodeSequence = [_code_item(*info.derivation_code)]
        # Enumerated Values YES, NO, REORIENTED_ONLY (PS3.3 C.7.6.1.1.4). Same plane, same
        # matrix: every pixel is where its source pixel was. A finer grid puts new pixels
        # where the source had none ("magnified or warped geometrically" is NO), although
        # the plane and the field of view are the same.
        ds.SourceImageSequence = [source_image_item(source, preserved=scale == 1)]

        if scale > 1:
            # Image Plane (PS3.3 C.7.6.2): same orientation, frame of reference, slice
            # thickness and location; a finer grid over the same field of view.
            ds.ImagePositionPatient, ds.PixelSpacing = _resampled_plane(source, scale)
            ds.Rows = int(source.Rows) * scale
            ds.Columns = int(source.Columns) * scale

        # Image Pixel (PS3.3 C.7.6.3): 16 bits stored so the whole modality range fits;
        # PixelRepresentation, Photometric and Rescale are the source's, Rows and Columns
        # the source's times the scale.
        ds.SamplesPerPixel = 1
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        stored = _stored_pixels(source, index, frame, slope, intercept, scale)
        ds.add(DataElement(0x7FE00010, "OW", stored.tobytes()))
        _carry_lossy_compression(ds, source)

        return as_file(ds)


def as_file(ds: Dataset) -> FileDataset:
    """``ds`` with its File Meta Information (PS3.10 7.1), Explicit VR Little Endian
    whatever the source used."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return FileDataset("", ds, preamble=b"\x00" * 128, file_meta=meta, is_implicit_VR=False)
