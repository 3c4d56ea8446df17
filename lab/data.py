"""The CT data manifest: every real slice of ``../shared/data``, split by patient, with checksums.

A quality figure means something only for patients the model never saw, so slices are
assigned to ``train``, ``validation`` or ``test`` by patient, never by slice; whole scanner
models are kept out of training where the data allow (:data:`TEST_SCANNERS`). The split is
committed as JSON (``lab/manifests/ct.json``) with each file's SHA-256, and
:func:`load_slices` refuses a file whose bytes differ from the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.pixels import apply_rescale

from lab import CT_MANIFEST

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")

MANIFEST = CT_MANIFEST

# Scanner models whose every patient is a test patient: the model never sees these
# scanners (one GE and two Siemens models, smooth and standard kernels).
TEST_SCANNERS = frozenset({"HiSpeed CT/i", "Sensation 64", "Biograph 40"})
# Test patients named because the hash alone put no sharp kernel and one real low-dose
# slice in the test split (chosen by kernel and mAs only, before any model was evaluated):
# GE BONE, Siemens B60f (with B20f), and real 5 mAs and 7 mAs acquisitions.
TEST_PATIENTS = frozenset({"TCGA-50-6592", "TCGA-17-Z043", "TCGA-50-8459", "TCGA-34-8455"})
# Further TCGA patients by a hash of the patient ID (stable, not chosen by looking at
# results): below 0.18 test, below 0.32 validation.
TEST_FRACTION, VALIDATION_FRACTION = 0.18, 0.14
# Slices acquired at or below this tube current-time product are real low-dose scans
# (PET/CT attenuation scans at 5-32 mAs): never a supervised target, since their own noise
# is what the model must remove; test patients' ones get no-reference figures.
LOW_DOSE_MAS = 40.0
# Whole series of the pancreas patient: every ``PANCREAS_STRIDE``-th slice is kept, so
# slices are 12 mm apart and count as distinct samples for confidence intervals.
PANCREAS_STRIDE = 4
PHANTOM_STRIDE = 2

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

ARCHIVES: dict[str, str] = {
    "tcga": "ct_tcga_slices.tar.xz",
    "pancreas": "ct_pancreas_tcia.tar.xz",
    "philips_phantom": "ct_study_philips.tar.xz",
}


@dataclass(frozen=True)
class SliceEntry:
    """One real CT slice of the manifest."""

    collection: str  # a key of ARCHIVES
    member: str  # path inside the archive
    sha256: str  # of the file's bytes
    patient: str  # PatientID as the collection publishes it (already de-identified)
    split: Split
    manufacturer: str
    scanner: str
    kernel: str
    exposure_mas: float | None
    low_dose: bool  # a real low-dose acquisition (<= LOW_DOSE_MAS)
    duplicate_of: str | None  # member of an earlier entry with identical pixels

    @property
    def group(self) -> str:
        """The vendor and kernel group results are reported by (e.g. ``GE sharp``)."""
        return f"{vendor(self.manufacturer)} {kernel_class(self.kernel)}"


def vendor(manufacturer: str) -> str:
    """A short vendor name: GE, Siemens, Philips, Toshiba or the manufacturer as written."""
    text = manufacturer.upper()
    for key, name in (("GE", "GE"), ("SIEMENS", "Siemens"), ("PHILIPS", "Philips"),
                      ("TOSHIBA", "Toshiba"), ("CANON", "Canon")):  # fmt: skip
        if key in text:
            return name
    return manufacturer.strip() or "unknown"


def kernel_class(kernel: str) -> str:
    """``smooth`` or ``sharp`` from a reconstruction kernel name.

    Siemens kernels carry their sharpness as a number (B20f smooth ... B60f sharp; the old
    ``AB50`` / ``B50s`` names too); GE's BONE, LUNG, EDGE and DETAIL are sharp, SOFT and
    STANDARD smooth; Philips letters A-C smooth, D-E sharp.
    """
    name = kernel.upper().replace(" ", "")
    if any(word in name for word in ("BONE", "LUNG", "EDGE", "DETAIL", "SHARP")):
        return "sharp"
    digits = "".join(ch for ch in name.split(".")[-1] if ch.isdigit())
    if digits and len(digits) >= 2:
        return "sharp" if int(digits[:2]) >= 45 else "smooth"
    if name[:1] in ("D", "E") and len(name) == 1:
        return "sharp"
    return "smooth"


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) from ``text``."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


def _tcga_split(patient: str, scanners: set[str]) -> Split:
    if scanners & TEST_SCANNERS or patient in TEST_PATIENTS:
        return "test"
    u = _unit_hash(f"tcga-split:{patient}")
    if u < TEST_FRACTION:
        return "test"
    return "validation" if u < TEST_FRACTION + VALIDATION_FRACTION else "train"


def _exposure(dataset: pydicom.Dataset) -> float | None:
    value = dataset.get("Exposure")
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _members(archive: Path) -> Iterator[tuple[str, bytes]]:
    """(member path, bytes) of every regular file in ``archive``, in name order.

    The archive is read once as a stream, then sorted: reading members of an xz archive out
    of order seeks backwards, which decompresses it again from the start each time (minutes
    per archive). The archives are tens of MB, so holding one in memory is fine.
    """
    files = []
    with tarfile.open(archive, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            handle = tar.extractfile(info)
            if handle is not None:
                files.append((info.name, handle.read()))
    yield from sorted(files, key=lambda item: item[0])


def _is_axial_image(dataset: pydicom.Dataset) -> bool:
    image_type = [str(v).upper() for v in dataset.get("ImageType", [])]
    # CT Image Storage only: the Philips study's "Exam Summary" pages say Modality CT too,
    # but are Secondary Capture screenshots without a pixel spacing.
    return (
        dataset.get("SOPClassUID") == CT_IMAGE_STORAGE
        and "PixelSpacing" in dataset
        and "PixelData" in dataset
        and "LOCALIZER" not in image_type
        and int(dataset.get("NumberOfFrames", 1) or 1) == 1
    )


def build_manifest(data_dir: Path) -> list[SliceEntry]:
    """Read the archives in ``data_dir`` and assign every real CT slice to a split.

    The pancreas patient (Philips) is a test patient: its vendor is in no training
    series. The Philips phantom study trains (a phantom, no patient). TCGA patients follow
    :func:`_tcga_split`. Files whose pixels repeat an earlier file are kept in the manifest
    with ``duplicate_of`` and never used twice.
    """
    records: list[tuple[str, str, str, pydicom.Dataset]] = []
    for collection, name in ARCHIVES.items():
        archive = data_dir / name
        if not archive.is_file():
            raise FileNotFoundError(f"{archive} is missing (see ../shared/data/README.md)")
        for member, blob in _members(archive):
            if not member.endswith(".dcm") and "/" not in member.strip("/"):
                continue
            try:
                parsed = pydicom.dcmread(io.BytesIO(blob))
            except (pydicom.errors.InvalidDicomError, EOFError, ValueError):
                continue
            if _is_axial_image(parsed):
                records.append((collection, member, hashlib.sha256(blob).hexdigest(), parsed))

    scanners_of: dict[str, set[str]] = {}
    for collection, _, _, dataset in records:
        if collection == "tcga":
            scanners_of.setdefault(str(dataset.PatientID), set()).add(
                str(dataset.get("ManufacturerModelName", ""))
            )
    entries: list[SliceEntry] = []
    seen_pixels: dict[str, str] = {}
    series_index: dict[str, int] = {}
    for collection, member, digest, dataset in records:
        patient = str(dataset.get("PatientID", ""))
        if collection == "tcga":
            split = _tcga_split(patient, scanners_of[patient])
        elif collection == "pancreas":
            split = "test"
        else:
            split = "train"
        if collection in ("pancreas", "philips_phantom"):
            series = str(dataset.SeriesInstanceUID)
            index = series_index.get(series, 0)
            series_index[series] = index + 1
            stride = PANCREAS_STRIDE if collection == "pancreas" else PHANTOM_STRIDE
            if index % stride:
                continue
        pixels = hashlib.sha256(dataset.PixelData).hexdigest()
        exposure = _exposure(dataset)
        entries.append(
            SliceEntry(
                collection=collection,
                member=member,
                sha256=digest,
                patient=patient,
                split=split,
                manufacturer=str(dataset.get("Manufacturer", "")),
                scanner=str(dataset.get("ManufacturerModelName", "")),
                kernel=str(dataset.get("ConvolutionKernel", "")),
                exposure_mas=exposure,
                low_dose=exposure is not None and exposure <= LOW_DOSE_MAS,
                duplicate_of=seen_pixels.get(pixels),
            )
        )
        seen_pixels.setdefault(pixels, member)
    return entries


def write_manifest(entries: Iterable[SliceEntry], path: Path = MANIFEST) -> Path:
    """Write the manifest as sorted, indented JSON (one stable text for review)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(
        (asdict(entry) for entry in entries), key=lambda r: (r["collection"], r["member"])
    )
    document = {
        "description": "Real CT slices of ../shared/data split by patient; see lab/data.py",
        "rules": {
            "test_scanners": sorted(TEST_SCANNERS),
            "test_patients": sorted(TEST_PATIENTS),
            "tcga_test_fraction": TEST_FRACTION,
            "tcga_validation_fraction": VALIDATION_FRACTION,
            "low_dose_mas": LOW_DOSE_MAS,
            "pancreas_stride": PANCREAS_STRIDE,
            "phantom_stride": PHANTOM_STRIDE,
            "pancreas": "test",
            "philips_phantom": "train",
        },
        "slices": rows,
    }
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(path: Path = MANIFEST) -> list[SliceEntry]:
    """The committed manifest's entries."""
    document = json.loads(path.read_text())
    return [SliceEntry(**row) for row in document["slices"]]


def select(
    entries: Iterable[SliceEntry],
    split: Split,
    *,
    low_dose: bool | None = False,
    collections: Iterable[str] | None = None,
) -> list[SliceEntry]:
    """Entries of ``split`` without duplicates; ``low_dose`` None keeps both kinds."""
    wanted = set(collections) if collections is not None else None
    return [
        e
        for e in entries
        if e.split == split
        and e.duplicate_of is None
        and (low_dose is None or e.low_dose == low_dose)
        and (wanted is None or e.collection in wanted)
    ]


@dataclass(frozen=True)
class CtSlice:
    """A slice's HU values, pixel spacing and its manifest entry."""

    hu: np.ndarray  # float32 (y, x), rescale applied, padding as stored
    spacing_mm: float
    entry: SliceEntry
    padding_hu: float | None  # PixelPaddingValue in HU, where the file declares one


def load_slices(entries: Iterable[SliceEntry], data_dir: Path) -> list[CtSlice]:
    """Read the entries' files from the archives, checking each file's SHA-256.

    Raises
    ------
    ValueError
        If a file is missing from its archive or its bytes differ from the manifest.
    """
    wanted: dict[str, dict[str, SliceEntry]] = {}
    for entry in entries:
        wanted.setdefault(entry.collection, {})[entry.member] = entry
    found: dict[tuple[str, str], CtSlice] = {}
    for collection, members in wanted.items():
        for member, blob in _members(data_dir / ARCHIVES[collection]):
            known = members.get(member)
            if known is None:
                continue
            if hashlib.sha256(blob).hexdigest() != known.sha256:
                raise ValueError(f"{collection}/{member}: bytes differ from the manifest")
            dataset = pydicom.dcmread(io.BytesIO(blob))
            hu = np.asarray(apply_rescale(dataset.pixel_array, dataset), dtype=np.float32)
            padding = dataset.get("PixelPaddingValue")
            padding_hu = None
            if padding is not None:
                raw = int(padding)
                if int(dataset.PixelRepresentation) == 1 and raw >= 2**15:
                    raw -= 2**16  # a signed value written with an unsigned VR (US)
                padding_hu = float(raw * float(dataset.get("RescaleSlope", 1) or 1)
                                   + float(dataset.get("RescaleIntercept", 0) or 0))  # fmt: skip
            found[(collection, member)] = CtSlice(
                hu, float(dataset.PixelSpacing[0]), known, padding_hu
            )
    missing = [f"{c}/{m}" for c, ms in wanted.items() for m in ms if (c, m) not in found]
    if missing:
        raise ValueError(f"not in the archives: {', '.join(missing[:5])}")
    return [found[(e.collection, e.member)] for es in wanted.values() for e in es.values()]
