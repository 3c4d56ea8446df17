"""Synthetic, standard-conforming CT and MR series (phantoms) for tests."""

from __future__ import annotations

import math
import secrets
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

__all__ = [
    "CONTRAST_DISKS_HU",
    "drop_pixel_data",
    "file_path",
    "make_ct_series",
    "phantom_hu",
    "truncate_pixel_data",
]

#: (centre x, centre y as fractions of the matrix, radius fraction, HU) of the inserts.
CONTRAST_DISKS_HU: tuple[tuple[float, float, float, float], ...] = (
    (0.35, 0.40, 0.07, 300.0),  # iodine-like contrast
    (0.65, 0.40, 0.07, 1000.0),  # bone-like
    (0.50, 0.68, 0.08, -100.0),  # fat-like
)
_WATER_RADIUS = 0.40  # fraction of the smaller matrix dimension
_FOV_RADIUS = 0.49  # pixels outside the reconstruction circle become padding if requested
_INTERCEPT = -1024.0


def phantom_hu(
    rows: int, cols: int, rng: np.random.Generator, noise_hu: float = 10.0
) -> np.ndarray:
    """Return one noisy phantom slice in HU: water cylinder, air outside, contrast disks."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    size = float(min(rows, cols))
    cy, cx = (rows - 1) / 2.0, (cols - 1) / 2.0
    r = np.hypot(y - cy, x - cx) / size
    hu = np.full((rows, cols), -1000.0)
    hu[r <= _WATER_RADIUS] = 0.0
    for fx, fy, fr, value in CONTRAST_DISKS_HU:
        disk = np.hypot(y - fy * (rows - 1), x - fx * (cols - 1)) / size <= fr
        hu[disk] = value
    hu += rng.normal(0.0, noise_hu, size=hu.shape)
    return hu


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def make_ct_series(
    out_dir: Path | None,
    n_slices: int = 8,
    rows: int = 64,
    cols: int = 64,
    *,
    seed: int = 0,
    tilt_deg: float = 0.0,
    shuffle_instance_numbers: bool = True,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 3,
    modality: str = "CT",
    pixel_representation: int = 1,
    bits_stored: int = 16,
    slice_spacing_mm: float = 2.5,
    pixel_spacing_mm: float = 0.7,
    pixel_padding_value: int | None = None,
    add_private_tags: bool = True,
    add_icon: bool = False,
    series_description: str = "Synthetic phantom",
    noise_hu: float = 10.0,
) -> list[FileDataset]:
    """Return (and write, when ``out_dir`` is given) a synthetic single-frame series.

    Parameters
    ----------
    out_dir : pathlib.Path or None
        Folder for the files (random names, ``.dcm``); nothing is written when None.
    n_slices, rows, cols : int
        Size of the volume.
    seed : int
        Seed of the noise and of the shuffled instance numbers; UIDs are always random.
    tilt_deg : float
        Gantry tilt: the column direction is rotated about the patient x axis while the
        positions step along the table (z), as scanners write tilted series.
    shuffle_instance_numbers : bool
        Give InstanceNumbers a random permutation, unrelated to the spatial order.
    study_uid, series_uid : str or None
        Fixed UIDs (random when None).
    series_number : int
        Series Number.
    modality : str
        ``"CT"`` (CT Image Storage, HU with RescaleIntercept -1024, slope 1) or ``"MR"``
        (MR Image Storage, no rescale; stored = HU + 1024 as a stand-in signal).
    pixel_representation : int
        0 (unsigned) or 1 (two's complement) stored pixels.
    bits_stored : int
        Bits Stored (High Bit = bits_stored - 1); 16 or 12 are typical.
    slice_spacing_mm, pixel_spacing_mm : float
        Table increment between slices and in-plane pixel size.
    pixel_padding_value : int or None
        If given, stored value of the pixels outside the reconstruction circle and
        PixelPaddingValue (0028,0120).
    add_private_tags : bool
        Add a private block, as vendors do, which derived images must drop.
    add_icon : bool
        Add an IconImageSequence (PS3.3 C.7.6.1.1.6), which derived images must drop.
    series_description : str
        Series Description.
    noise_hu : float
        Standard deviation of the Gaussian noise in HU.

    Returns
    -------
    list of pydicom.dataset.FileDataset
        The instances in spatial order (increasing position along the slice normal); when
        written, ``ds.filename`` is the file's path.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if pixel_representation not in (0, 1):
        raise ValueError(f"pixel_representation must be 0 or 1, got {pixel_representation}")
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    numbers = np.arange(1, n_slices + 1)
    if shuffle_instance_numbers and n_slices > 1:
        while np.array_equal(numbers, np.arange(1, n_slices + 1)):
            numbers = rng.permutation(np.arange(1, n_slices + 1))

    tilt = math.radians(tilt_deg)
    row_cos = (1.0, 0.0, 0.0)
    # DS holds at most 16 characters (PS3.5 6.2): 10 decimals fit.
    col_cos = (0.0, round(math.cos(tilt), 10), round(-math.sin(tilt), 10))
    lo, hi = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1)
    if pixel_representation == 0:
        lo, hi = 0, 2**bits_stored - 1
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    outside_fov = (
        np.hypot(yy - (rows - 1) / 2.0, xx - (cols - 1) / 2.0) / min(rows, cols) > _FOV_RADIUS
    )

    out: list[FileDataset] = []
    for k in range(n_slices):
        sop_uid = generate_uid()
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        # Value 3 is required for both: AXIAL for CT (PS3.3 C.8.2.1.1.1), OTHER for MR.
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
        ds.InstanceCreationDate = "20240105"
        ds.InstanceCreationTime = "101500"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        # Patient (PS3.3 C.7.1.1); Type 2 attributes present.
        ds.PatientName = "Phantom^Synthetic"
        ds.PatientID = "PHANTOM-001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        # General Study (C.7.2.1).
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20240105"
        ds.StudyTime = "101010"
        ds.ReferringPhysicianName = "Referrer^Ray"
        ds.StudyID = "S1"
        ds.AccessionNumber = "ACC0001"
        ds.StudyDescription = "Synthetic study"
        # General Series (C.7.3.1); Patient Position is Type 2C, required for CT and MR.
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.SeriesDate = "20240105"
        ds.SeriesTime = "101200"
        ds.BodyPartExamined = "HEAD"
        ds.PatientPosition = "HFS"
        # Frame of Reference (C.7.4.1).
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        # General Equipment (C.7.5.1).
        ds.Manufacturer = "SyntheticScanner"
        ds.ManufacturerModelName = "Phantom-1"
        ds.SoftwareVersions = "1.0"
        if pixel_padding_value is not None:
            ds.PixelPaddingValue = pixel_padding_value
        # General Acquisition / General Image (C.7.10.1, C.7.6.1).
        ds.AcquisitionNumber = 1
        ds.AcquisitionDate = "20240105"
        ds.AcquisitionTime = "101300"
        ds.InstanceNumber = int(numbers[k])
        ds.ContentDate = "20240105"
        ds.ContentTime = "101300"
        ds.BurnedInAnnotation = "NO"
        # Image Plane (C.7.6.2): positions step along the table (z) even when tilted.
        ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
        ds.ImageOrientationPatient = [*row_cos, *col_cos]
        origin_x = -(cols - 1) / 2.0 * pixel_spacing_mm
        origin_y = -(rows - 1) / 2.0 * pixel_spacing_mm
        z = k * slice_spacing_mm
        ds.ImagePositionPatient = [
            round(origin_x, 4),
            round(origin_y * math.cos(tilt), 4),
            round(z - origin_y * math.sin(tilt), 4),
        ]
        ds.SliceThickness = slice_spacing_mm
        ds.SliceLocation = round(z, 4)
        # Image Pixel (C.7.6.3).
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = pixel_representation
        if modality == "CT":
            # CT Image (C.8.2.1).
            ds.RescaleIntercept = _INTERCEPT
            ds.RescaleSlope = 1.0
            ds.RescaleType = "HU"
            ds.KVP = 120
            ds.ConvolutionKernel = "STANDARD"
            ds.GantryDetectorTilt = round(tilt_deg, 4)
        else:
            # MR Image (C.8.3.1).
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = 500.0
            ds.EchoTime = 15.0
            ds.EchoTrainLength = 1
            ds.MagneticFieldStrength = 1.5
            ds.ImagedNucleus = "1H"
        # VOI LUT (C.11.2): a soft-tissue window.
        ds.WindowCenter = 40
        ds.WindowWidth = 400

        hu = phantom_hu(rows, cols, rng, noise_hu=noise_hu)
        stored = np.clip(np.rint(hu - _INTERCEPT), lo, hi)
        if pixel_padding_value is not None:
            # Keep real pixels off the padding value so padding is unambiguous.
            stored[stored == pixel_padding_value] = pixel_padding_value + 1
            stored[outside_fov] = pixel_padding_value
        dtype = "<i2" if pixel_representation == 1 else "<u2"
        ds.PixelData = stored.astype(dtype).tobytes()
        ds["PixelData"].VR = "OW"
        ds.SmallestImagePixelValue = int(stored.min())
        ds.LargestImagePixelValue = int(stored.max())
        if pixel_representation == 1:
            ds["SmallestImagePixelValue"].VR = "SS"
            ds["LargestImagePixelValue"].VR = "SS"
            if pixel_padding_value is not None:
                ds["PixelPaddingValue"].VR = "SS"

        if add_private_tags:
            block = ds.private_block(0x0029, "SYNTHETIC RECON", create=True)
            block.add_new(0x10, "LO", "iterative-recon-v2")
            block.add_new(0x11, "DS", "0.75")
        if add_icon:
            ds.IconImageSequence = [_icon(stored)]

        file_ds = FileDataset(
            "",
            ds,
            preamble=b"\x00" * 128,
            file_meta=_file_meta(sop_class, sop_uid),
            is_implicit_VR=False,
        )
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{secrets.token_hex(8)}.dcm"
            file_ds.save_as(path, enforce_file_format=True)
            file_ds.filename = str(path)
        out.append(file_ds)
    return out


def _icon(stored: np.ndarray) -> Dataset:
    """Return an 8-bit 16x16 icon of a slice (PS3.3 C.7.6.1.1.6)."""
    step_y = max(1, stored.shape[0] // 16)
    step_x = max(1, stored.shape[1] // 16)
    small = stored[::step_y, ::step_x][:16, :16].astype(np.float64)
    span = float(small.max() - small.min()) or 1.0
    scaled = np.rint((small - small.min()) / span * 255).astype(np.uint8)
    icon = Dataset()
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.Rows, icon.Columns = scaled.shape
    icon.BitsAllocated = 8
    icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon.PixelData = scaled.tobytes()
    icon["PixelData"].VR = "OB"
    return icon


def file_path(ds: Dataset) -> Path:
    """Return the path a dataset made by :func:`make_ct_series` was written to."""
    filename = getattr(ds, "filename", None)
    if not isinstance(filename, str) or not filename:
        raise ValueError("dataset was not written to a file (make_ct_series(out_dir=None))")
    return Path(filename)


def truncate_pixel_data(ds: Dataset, keep_fraction: float = 0.5) -> Dataset:
    """Cut PixelData to ``keep_fraction`` of its length (even), as a broken transfer would.

    Modifies and returns ``ds``; save it to disk for load tests.
    """
    data = bytes(ds.PixelData)
    keep = int(len(data) * keep_fraction) // 2 * 2
    ds.PixelData = data[:keep]
    return ds


def drop_pixel_data(ds: Dataset) -> Dataset:
    """Remove PixelData (a header-only instance). Modifies and returns ``ds``."""
    del ds.PixelData
    return ds
