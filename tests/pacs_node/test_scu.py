"""C-STORE sending in the syntax each peer accepts, against real pynetdicom SCPs: compressed
files go as stored where accepted, else decoded losslessly; a destination may ask for a
lossless compressed syntax; each fallback is recorded in the instance's send message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from pacs_node.scu import send_c_store
from pacs_node.settings import CStoreDestination, SendSettings
from tests.integration.peers import CaptureSCP

J2K_FILE = "CT1_J2KR.dcm"
PLAIN_FILE = "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm"


def _send(port: int, path: Path, syntax: str | None = None) -> str:
    destination = CStoreDestination(ae_title="PACS", host="127.0.0.1", port=port,
                                    transfer_syntax=syntax)  # fmt: skip
    [result] = send_c_store(destination, [path], calling_ae_title="ENHANCE",
                            settings=SendSettings())  # fmt: skip
    assert result.ok, result.message
    return result.message


def test_a_compressed_file_goes_as_stored_where_the_peer_accepts_it(
    transfer_syntax_dir: Path,
) -> None:
    path = transfer_syntax_dir / J2K_FILE
    with CaptureSCP("PACS", compressed=[JPEG2000Lossless]) as pacs:
        message = _send(pacs.port, path)
        [received] = pacs.wait_for(1)
    assert "transcoded" not in message
    assert received.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert received.PixelData == pydicom.dcmread(path).PixelData


def test_a_compressed_file_is_decoded_for_a_peer_that_refuses_its_syntax(
    transfer_syntax_dir: Path,
) -> None:
    path = transfer_syntax_dir / J2K_FILE
    original = pydicom.dcmread(path)
    with CaptureSCP("PACS") as pacs:  # uncompressed only
        message = _send(pacs.port, path)
        [received] = pacs.wait_for(1)
    assert "transcoded from JPEG 2000 Image Compression (Lossless Only)" in message
    assert received.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert received.SOPInstanceUID == original.SOPInstanceUID
    np.testing.assert_array_equal(received.pixel_array, original.pixel_array)


def test_a_destination_may_ask_for_lossless_jpeg_2000_and_falls_back_when_refused(
    transfer_syntax_dir: Path,
) -> None:
    path = transfer_syntax_dir / PLAIN_FILE
    original = pydicom.dcmread(path)
    with CaptureSCP("PACS", compressed=[JPEG2000Lossless]) as pacs:
        assert _send(pacs.port, path, JPEG2000Lossless) == "Success"
        [received] = pacs.wait_for(1)
    assert received.file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(received.pixel_array, original.pixel_array)
    with CaptureSCP("PACS") as pacs:
        message = _send(pacs.port, path, JPEG2000Lossless)
        [received] = pacs.wait_for(1)
    assert "sent uncompressed: the destination did not accept JPEG 2000" in message
    np.testing.assert_array_equal(received.pixel_array, original.pixel_array)
