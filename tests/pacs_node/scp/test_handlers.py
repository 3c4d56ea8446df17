"""The Storage SCP in-process on a free port, driven by a real pynetdicom SCU."""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, SecondaryCaptureImageStorage, Verification

from pacs_node.db.models import JobStatus
from tests.helpers.synthetic import drop_pixel_data, make_ct_series, truncate_pixel_data
from tests.pacs_node.scp.conftest import Node


def _associate(port: int, called: str = "ENHANCE", syntaxes: list[str] | None = None) -> object:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    for sop_class in (CTImageStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(sop_class, syntaxes or [ExplicitVRLittleEndian])
    return ae.associate("127.0.0.1", port, ae_title=called)


def _store(port: int, datasets: list[Dataset]) -> list[int]:
    assoc = _associate(port)
    assert assoc.is_established  # type: ignore[attr-defined]
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    return statuses


def test_echo_and_wrong_called_ae(node: Node) -> None:
    assoc = _associate(node.port)
    assert assoc.is_established  # type: ignore[attr-defined]
    assert int(assoc.send_c_echo().Status) == 0  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    wrong = _associate(node.port, called="OTHER")
    assert wrong.is_rejected  # type: ignore[attr-defined]


def test_store_is_durable_and_recorded_before_success(node: Node) -> None:
    series = make_ct_series(None, n_slices=3, rows=32, cols=32)
    assert _store(node.port, series) == [0, 0, 0]
    jobs = node.repository.list_jobs()
    assert len(jobs) == 1 and jobs[0].instance_count == 3
    assert jobs[0].status is JobStatus.RECEIVING and jobs[0].calling_ae_title == "SCANNER"
    for ds in series:
        path = node.store.received_path(str(ds.SOPInstanceUID))
        stored = pydicom.dcmread(path)
        assert stored.SOPInstanceUID == ds.SOPInstanceUID
        assert stored.PixelData == ds.PixelData
        assert str(ds.SOPInstanceUID) not in str(path)


def test_a_disk_past_its_watermark_refuses_instances_until_space_returns(node: Node) -> None:
    first, second = make_ct_series(None, n_slices=2, rows=32, cols=32)
    node.disk.min_free_bytes = 2**63  # more free space than any disk has: "full"
    assoc = _associate(node.port)
    status = assoc.send_c_store(first)  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert int(status.Status) == 0xA700  # Out of Resources
    assert "watermark" in str(status.ErrorComment)
    assert node.repository.list_jobs() == []
    assert not any(p.is_file() for p in node.store.root.rglob("*"))  # no file left behind
    node.disk.min_free_bytes = 0  # space is back: accepted again, no restart
    assert _store(node.port, [first, second]) == [0, 0]
    [job] = node.repository.list_jobs()
    assert job.instance_count == 2


def test_duplicate_is_acknowledged_but_not_stored_twice(node: Node) -> None:
    series = make_ct_series(None, n_slices=2, rows=32, cols=32)
    assert _store(node.port, series) == [0, 0]
    assert _store(node.port, series[:1]) == [0]
    [job] = node.repository.list_jobs()
    assert job.instance_count == 2
    assert len(node.repository.job_inputs(job.id)) == 2


def test_truncated_pixel_data_is_refused_with_cannot_understand(node: Node) -> None:
    [ds] = make_ct_series(None, n_slices=1, rows=32, cols=32)
    truncate_pixel_data(ds)
    assoc = _associate(node.port)
    status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert int(status.Status) == 0xC210
    assert "truncated" in str(status.ErrorComment)
    assert node.repository.list_jobs() == []
    assert not node.store.received_path(str(ds.SOPInstanceUID)).exists()


def test_image_without_pixel_data_is_refused(node: Node) -> None:
    [ds] = make_ct_series(None, n_slices=1, rows=32, cols=32)
    drop_pixel_data(ds)
    assoc = _associate(node.port)
    status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert int(status.Status) == 0xA900
    assert "Pixel Data" in str(status.ErrorComment)
    assert node.repository.list_jobs() == []


def test_missing_series_uid_is_refused_and_node_keeps_serving(node: Node) -> None:
    bad, good = make_ct_series(None, n_slices=2, rows=32, cols=32)
    del bad.SeriesInstanceUID
    assoc = _associate(node.port)
    assert int(assoc.send_c_store(bad).Status) == 0xA900  # type: ignore[attr-defined]
    assert int(assoc.send_c_store(good).Status) == 0  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]


JPEG_SPECTRAL = "1.2.840.10008.1.2.4.53"  # JPEG spectral selection (retired)


def test_a_transfer_syntax_the_node_cannot_decode_is_not_accepted(node: Node) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, [JPEG_SPECTRAL])  # retired, no decoder
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ENHANCE")
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    assoc.release()
    assert CTImageStorage not in accepted


def test_implicit_vr_is_stored_as_received(node: Node) -> None:
    [ds] = make_ct_series(None, n_slices=1, rows=32, cols=32)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ENHANCE")
    assert int(assoc.send_c_store(ds).Status) == 0
    assoc.release()
    stored = pydicom.dcmread(node.store.received_path(str(ds.SOPInstanceUID)))
    assert stored.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert stored.PixelData == ds.PixelData
