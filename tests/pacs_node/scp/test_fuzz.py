"""Fuzzing the door: real CT files with random bytes changed, cut or inserted after their
file meta, sent by C-STORE and STOW-RS to the node in-process. It never crashes or hangs,
and never answers success for an instance it cannot file and decode.

The number of examples is bounded for CI (``PACS_NODE_FUZZ_EXAMPLES``, default 40 per
protocol) and the run is derandomised, so a failure reproduces; a longer random run:
``PACS_NODE_FUZZ_EXAMPLES=2000 PACS_NODE_FUZZ_RANDOM=1 pytest tests/pacs_node/scp/test_fuzz.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE
from pynetdicom.presentation import StoragePresentationContexts

from pacs_node.admin import TokenStore
from pacs_node.api.app import create_app
from pacs_node.api.multipart import build_related
from pacs_node.db.repository import JobRepository
from pacs_node.dicom.validation import ACCEPTED, identifier_problem, is_image_storage
from pacs_node.ingest import Receiver
from pacs_node.routing import Routing
from pacs_node.storage import InstanceStore
from tests.pacs_node.scp.conftest import Node

EXAMPLES = int(os.environ.get("PACS_NODE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("PACS_NODE_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
SOURCES = (
    "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm",
    "CTImage.dcm_LittleEndianImplicitTransferSyntax_1.2.840.10008.1.2.dcm",
    "CTImage.dcm_JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90.dcm",
    "CTImage.dcm_JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80.dcm",
    "CTImage.dcm_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm",
)


def _meta_end(data: bytes) -> int:
    """Offset of the first byte after the File Meta Information group."""
    buffer = DicomBytesIO(data)
    pydicom.filereader.read_preamble(buffer, False)
    pydicom.filereader._read_file_meta_info(buffer)
    return buffer.tell()


@st.composite
def mutated(draw: st.DrawFn, folder: Path) -> tuple[bytes, str]:
    """A real file with its data set damaged: bytes overwritten, a cut, or an insertion."""
    name = draw(st.sampled_from(SOURCES))
    data = bytearray((folder / name).read_bytes())
    start = _meta_end(bytes(data))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        # Headers sit near the start of the data set; damage them often.
        end = len(data) if kind != "header" else min(len(data), start + 600)
        where = draw(st.integers(start, max(start, end - 1)))
        if kind in ("flip", "header"):
            size = draw(st.integers(1, 8))
            data[where : where + size] = draw(st.binary(min_size=size, max_size=size))
        elif kind == "cut":
            del data[where : where + draw(st.integers(1, 4096))]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data), name


def _usable(path: Path) -> str | None:
    """Why a file the node acknowledged is not usable, or None."""
    try:
        ds = pydicom.dcmread(path)
        problem = identifier_problem(ds)
        if problem is not None:
            return problem
        if ds.file_meta.TransferSyntaxUID not in ACCEPTED:
            return f"stored in {ds.file_meta.TransferSyntaxUID}"
        if is_image_storage(str(ds.SOPClassUID)):
            ds.pixel_array  # noqa: B018 - must decode
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return f"{type(exc).__name__}: {exc}"
    return None


def test_c_store_of_damaged_files_never_acknowledges_what_cannot_be_used(
    node: Node, transfer_syntax_dir: Path, tmp_path: Path
) -> None:
    ae = AE(ae_title="FUZZER")
    ae.requested_contexts = StoragePresentationContexts[:100]
    ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 30
    for syntax in ACCEPTED[3:]:  # the compressed and deflated ones, for CT
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", [syntax])

    seen: Counter[str] = Counter()

    @FUZZ
    @given(sample=mutated(transfer_syntax_dir))
    def send(sample: tuple[bytes, str]) -> None:
        data, name = sample
        path = tmp_path / "fuzzed.dcm"
        path.write_bytes(data)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="ENHANCE")
        assert assoc.is_established, "the node stopped accepting associations"
        try:
            try:
                response = assoc.send_c_store(path)
            except Exception:  # noqa: BLE001 - the SCU could not even read or send it
                seen["not sendable"] += 1
                return
            seen[f"0x{int(response.get('Status', -1)) & 0xFFFF:04X}"] += 1
            if "Status" not in response:
                assert assoc.is_aborted or assoc.is_released, f"no answer to {name}"
                return
            if int(response.Status) in (0x0000, 0xB000, 0xB006, 0xB007):
                meta = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                stored = node.store.received_path(str(meta.SOPInstanceUID))
                assert stored.is_file(), "acknowledged but not stored"
                assert _usable(stored) is None, _usable(stored)
        finally:
            if assoc.is_established:
                assoc.release()

    send()
    print("C-STORE statuses:", dict(seen))
    # Not vacuous: damaged files were both stored (damage in pixel values of a native
    # encoding is still a usable image) and refused.
    assert seen["0x0000"] > 0 and sum(n for k, n in seen.items() if k != "0x0000") > 0
    # Still serving: an intact instance is stored.
    intact = pydicom.dcmread(transfer_syntax_dir / SOURCES[0])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="ENHANCE")
    intact.SOPInstanceUID = pydicom.uid.generate_uid()
    assert int(assoc.send_c_store(intact).Status) == 0
    assoc.release()


def test_stow_of_damaged_files_never_acknowledges_what_cannot_be_used(
    repository: JobRepository, transfer_syntax_dir: Path, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine

    store = InstanceStore(tmp_path / "data")
    receiver = Receiver(store, repository, Routing.simple("ENHANCE", "identity"))
    engine = create_engine("sqlite://")
    client = TestClient(create_app(repository, engine, receiver, registry=CollectorRegistry()))
    token = TokenStore(repository.session_factory).create("pacs", "dicomweb-write")

    seen: Counter[int] = Counter()

    @FUZZ
    @given(sample=mutated(transfer_syntax_dir))
    def post(sample: tuple[bytes, str]) -> None:
        data, _ = sample
        chunks, header = build_related([(data, "application/dicom")], "application/dicom")
        response = client.post("/dicom-web/studies", content=b"".join(chunks),
                               headers={"Content-Type": header,
                                        "Authorization": f"Bearer {token}"})  # fmt: skip
        assert response.status_code in (200, 202, 409), response.text
        seen[response.status_code] += 1
        if response.status_code == 200:
            stored = pydicom.Dataset.from_json(response.json())
            for item in stored.ReferencedSOPSequence:
                path = store.received_path(str(item.ReferencedSOPInstanceUID))
                assert path.is_file() and _usable(path) is None, _usable(path)

    post()
    print("STOW-RS answers:", dict(seen))
    assert seen[200] > 0 and seen[409] > 0


pytestmark = pytest.mark.filterwarnings("ignore")  # pydicom warns on every damaged value
