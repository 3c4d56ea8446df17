"""The catalogue of input checks: why a received dataset cannot be stored or understood,
as a C-STORE failure status and a comment (used by C-STORE, STOW-RS and worker uploads)."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pacs_node.dicom.codecs import COMPRESSED, DecodeError, decodable, pixel_array

# C-STORE failure statuses (PS3.4 Annex B.2.3).
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210

_REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
# Accepted transfer syntaxes: the uncompressed ones and those the node decodes.
UNCOMPRESSED: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,  # retired, still sent
)
ACCEPTED: tuple[UID, ...] = UNCOMPRESSED + tuple(s for s in COMPRESSED if decodable(s))
# A decompression bomb guard: the most decoded pixel bytes one instance may declare
# (an Enhanced CT of 2000 frames of 512 x 512 x 16 bits is 1 GiB).
MAX_DECODED_BYTES = 1 << 30


@dataclass(frozen=True)
class Problem:
    """Why an instance is refused: the DIMSE status and its comment."""

    status: int
    comment: str


def identifier_problem(ds: Dataset) -> str | None:
    """The first missing, empty or malformed UID the node needs to file the instance.

    A UID is digits and dots, at most 64 characters, with no empty component and no
    leading zero in a component (PS3.5 9.1).
    """
    for keyword in _REQUIRED_UIDS:
        value = str(ds.get(keyword, "") or "").strip()
        if not value:
            return f"{keyword} is missing or empty"
        if not UID(value).is_valid:
            shown = value if len(value) <= 64 else value[:64] + "..."
            return (
                f"{keyword} {shown!r} is not a valid UID (digits and dots, at most 64 "
                "characters, no leading zeros)"
            )
    return None


def is_image_storage(sop_class_uid: str) -> bool:
    """Whether the SOP class is an image storage class (its IOD has an Image Pixel module)."""
    return "Image Storage" in UID(sop_class_uid).name


def _declared_bytes(ds: Dataset) -> int:
    rows, columns = int(ds.Rows), int(ds.Columns)
    bits = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return (rows * columns * samples * frames * bits + 7) // 8


def pixel_data_problem(ds: Dataset, transfer_syntax_uid: str) -> Problem | None:
    """Why the dataset's Pixel Data cannot be used, or None when it can.

    Native encodings must hold exactly Rows x Columns x Samples per Pixel x Number of
    Frames x Bits Allocated bits (PS3.5 8.1.1), plus one byte of padding to an even
    length. Compressed ones must declare at most MAX_DECODED_BYTES and decode.
    """
    if "PixelData" not in ds:
        return Problem(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, "the dataset has no Pixel Data (7FE0,0010)"
        )
    syntax = UID(transfer_syntax_uid)
    if syntax not in ACCEPTED:
        return Problem(CANNOT_UNDERSTAND, f"transfer syntax {syntax} is not accepted")
    try:
        expected = _declared_bytes(ds)
    except (AttributeError, TypeError, ValueError) as exc:
        return Problem(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, f"the Image Pixel module is incomplete: {exc}"
        )
    if syntax.is_compressed:
        if expected > MAX_DECODED_BYTES:
            return Problem(
                CANNOT_UNDERSTAND,
                f"Pixel Data would decode to {expected} bytes, over the limit of "
                f"{MAX_DECODED_BYTES}",
            )
        try:
            pixel_array(ds)  # decoded once here, so that a success means usable
        except DecodeError as exc:
            return Problem(CANNOT_UNDERSTAND, f"Pixel Data cannot be decoded: {exc}")
        return None
    actual = len(ds.PixelData)
    if actual < expected:
        return Problem(
            CANNOT_UNDERSTAND, f"Pixel Data holds {actual} bytes, {expected} expected (truncated)"
        )
    if actual > expected + expected % 2:
        return Problem(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"Pixel Data holds {actual} bytes, {expected} expected from Rows x Columns x "
            "Samples x Frames x Bits Allocated",
        )
    return None
