"""C-STORE sending in the syntax each peer accepts, against real pynetdicom SCPs: compressed
files go as stored where accepted, else decoded losslessly; a destination may ask for a
lossless compressed syntax; each fallback is recorded in the instance's send message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

from pacs_node.errors import DispatchError
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


def test_a_series_goes_out_on_parallel_associations_each_instance_once(tmp_path: Path) -> None:
    import threading

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from tests.helpers.synthetic import file_path, make_ct_series
    from tests.integration.peers import free_port

    lock = threading.Lock()
    seen: list[tuple[str, int]] = []  # (SOP Instance UID, the association that carried it)
    open_now, most = 0, 0
    # Each association's first instance waits until all three have one: they overlap.
    together = threading.Barrier(3, timeout=10)
    started: set[int] = set()

    def on_store(event: evt.Event) -> int:
        with lock:
            seen.append((str(event.request.AffectedSOPInstanceUID), id(event.assoc)))
            first = id(event.assoc) not in started
            started.add(id(event.assoc))
        if first:
            together.wait()
        return 0x0000

    def on_open(event: evt.Event) -> None:
        nonlocal open_now, most
        with lock:
            open_now += 1
            most = max(most, open_now)

    def on_close(event: evt.Event) -> None:
        nonlocal open_now
        with lock:
            open_now -= 1

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    handlers = [(evt.EVT_C_STORE, on_store), (evt.EVT_ESTABLISHED, on_open),
                (evt.EVT_RELEASED, on_close), (evt.EVT_ABORTED, on_close)]  # fmt: skip
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        series = make_ct_series(tmp_path, n_slices=10, rows=16, cols=16)
        destination = CStoreDestination(ae_title="PACS", host="127.0.0.1", port=port)
        results = send_c_store(destination, [file_path(ds) for ds in series],
                               calling_ae_title="ENHANCE",
                               settings=SendSettings(associations=3))  # fmt: skip
    finally:
        server.shutdown()
    assert [r.sop_instance_uid for r in results] == [str(ds.SOPInstanceUID) for ds in series]
    assert all(r.ok for r in results)
    uids = sorted(uid for uid, _ in seen)
    assert uids == sorted(str(ds.SOPInstanceUID) for ds in series)  # each once
    assert len({assoc for _, assoc in seen}) == 3 and most == 3  # three, open at once
    shares = [sum(1 for _, a in seen if a == assoc) for assoc in {a for _, a in seen}]
    assert sorted(shares) == [3, 3, 4]  # 10 instances on 3 associations


def test_a_peer_that_takes_one_association_at_a_time_still_gets_every_instance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PACS that accepts one association at a time refuses associations asked for at
    once: the refused shares go again one after the other, and every instance is stored
    once; a peer that refuses every association is a dispatch error."""
    import threading

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from tests.helpers.synthetic import file_path, make_ct_series
    from tests.integration.peers import free_port

    lock = threading.Lock()
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        with lock:
            stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.maximum_associations = 1
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    series = make_ct_series(tmp_path / "a", n_slices=6, rows=16, cols=16)
    destination = CStoreDestination(ae_title="PACS", host="127.0.0.1", port=port)
    try:
        results = send_c_store(destination, [file_path(ds) for ds in series],
                               calling_ae_title="ENHANCE",
                               settings=SendSettings(associations=3))  # fmt: skip
    finally:
        server.shutdown()
    assert [r.sop_instance_uid for r in results] == [str(ds.SOPInstanceUID) for ds in series]
    assert all(r.ok for r in results), [r.message for r in results]
    assert sorted(stored) == sorted(str(ds.SOPInstanceUID) for ds in series)  # each once
    assert "on one association after the others" in caplog.text  # the refused shares
    with CaptureSCP(refuse_associations=True) as refusing:
        everywhere = CStoreDestination(ae_title="PACS", host="127.0.0.1", port=refusing.port)
        with pytest.raises(DispatchError, match="rejected"):
            send_c_store(
                everywhere,
                [file_path(ds) for ds in series],
                calling_ae_title="ENHANCE",
                settings=SendSettings(associations=2),
            )
