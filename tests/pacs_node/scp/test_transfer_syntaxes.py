"""Compressed input from real files: every transfer syntax the node accepts arrives by a
real C-STORE, is stored byte for byte and decodes to the HU of the uncompressed original
(lossy syntaxes within their error); what cannot be decoded is refused with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, EnhancedCTImageStorage  # type: ignore[attr-defined]

from pacs_node.dicom.validation import ACCEPTED, CANNOT_UNDERSTAND, DATASET_DOES_NOT_MATCH_SOP_CLASS
from pacs_node.dicom.volume import load_series
from tests.pacs_node.scp.conftest import Node

REFERENCE = "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm"
# Largest HU error each lossy syntax shows on this slice, with margin (lossless: exact).
LOSSY_MAX_HU = {
    "1.2.840.10008.1.2.4.50": 70.0,  # 8-bit baseline of a 16-bit CT, rescale slope 32
    "1.2.840.10008.1.2.4.51": 40.0,  # 12-bit extended
    "1.2.840.10008.1.2.4.81": 1.0,  # JPEG-LS near-lossless, NEAR = 1: a guaranteed bound
    "1.2.840.10008.1.2.4.91": 6.0,  # JPEG 2000 lossy
}


def _syntax(path: Path) -> UID:
    return pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


def _send(port: int, ds: Dataset, sop_class: str = CTImageStorage) -> int:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(sop_class, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="ENHANCE")
    assert assoc.is_established and assoc.accepted_contexts, ds.file_meta.TransferSyntaxUID
    status = int(assoc.send_c_store(ds).Status)
    assoc.release()
    return status


def _hu(path: Path) -> np.ndarray:
    return load_series([path]).values[0]


def test_every_decodable_syntax_of_the_sample_is_offered(transfer_syntax_dir: Path) -> None:
    syntaxes = {_syntax(p) for p in transfer_syntax_dir.glob("CTImage.dcm*")}
    retired = {UID("1.2.840.10008.1.2.4.53"), UID("1.2.840.10008.1.2.4.55")}  # no decoder
    assert syntaxes - retired <= set(ACCEPTED)
    assert len(syntaxes - retired) == 13


def test_each_syntax_is_stored_as_received_and_decodes_to_the_original_hu(
    node: Node, transfer_syntax_dir: Path
) -> None:
    reference = _hu(transfer_syntax_dir / REFERENCE)
    checked = []
    for path in sorted(transfer_syntax_dir.glob("CTImage.dcm_*")):
        syntax = _syntax(path)
        if syntax not in ACCEPTED:
            continue
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()  # each copy is its own instance
        assert _send(node.port, ds) == 0, syntax.name
        stored_path = node.store.received_path(str(ds.SOPInstanceUID))
        stored = pydicom.dcmread(stored_path)
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert stored.PixelData == ds.PixelData  # byte for byte, compressed or not
        error = np.abs(_hu(stored_path) - reference)
        assert error.max() <= LOSSY_MAX_HU.get(syntax, 0.0), (syntax.name, error.max())
        checked.append(syntax)
    assert len(checked) == 13


def test_a_real_enhanced_ct_in_12_bit_jpeg_is_accepted(
    node: Node, transfer_syntax_dir: Path
) -> None:
    ds = pydicom.dcmread(transfer_syntax_dir / "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm")
    assert _send(node.port, ds, EnhancedCTImageStorage) == 0
    assert node.store.received_path(str(ds.SOPInstanceUID)).is_file()


def test_compressed_pixel_data_that_does_not_decode_is_refused(
    node: Node, transfer_syntax_dir: Path
) -> None:
    path = transfer_syntax_dir / "CT1_J2KR.dcm"
    ds = pydicom.dcmread(path)
    [frame] = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])  # a codestream cut short
    assert _send(node.port, ds) == CANNOT_UNDERSTAND
    assert not node.store.received_path(str(ds.SOPInstanceUID)).exists()
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 65535  # declares 8 GiB once decoded: refused before decoding
    ds.NumberOfFrames = 1
    assert _send(node.port, ds) == CANNOT_UNDERSTAND


def test_native_pixel_data_longer_than_declared_is_refused(
    node: Node, transfer_syntax_dir: Path
) -> None:
    ds = pydicom.dcmread(transfer_syntax_dir / REFERENCE)
    ds.PixelData = ds.PixelData * 2
    assert _send(node.port, ds) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert not node.store.received_path(str(ds.SOPInstanceUID)).exists()


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "../../x"),
        ("SeriesInstanceUID", "1.2." + "3" * 70),
        ("StudyInstanceUID", "1.02.3"),  # a leading zero
    ],
)
def test_identifiers_that_are_not_uids_are_refused(
    node: Node, transfer_syntax_dir: Path, keyword: str, value: str
) -> None:
    ds = pydicom.dcmread(transfer_syntax_dir / REFERENCE)
    setattr(ds, keyword, value)
    assert _send(node.port, ds) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert not list(node.store.received_dir.rglob("*.dcm"))
    assert node.repository.list_jobs() == []


def test_a_decoder_panic_on_damaged_rle_is_a_refusal_not_a_crash(
    node: Node, transfer_syntax_dir: Path
) -> None:
    # Found by tests/pacs_node/scp/test_fuzz.py: one byte missing from the second RLE
    # segment makes pylibjpeg-rle panic (pyo3 PanicException, not an Exception).
    ds = pydicom.dcmread(
        transfer_syntax_dir / "CTImage.dcm_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm"
    )
    [frame] = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:200000] + frame[200001:]])
    assert _send(node.port, ds) == CANNOT_UNDERSTAND
    assert not node.store.received_path(str(ds.SOPInstanceUID)).exists()
    intact = pydicom.dcmread(transfer_syntax_dir / REFERENCE)
    assert _send(node.port, intact) == 0  # still serving
