"""Concurrent senders for load tests and the soak benchmark: C-STORE associations and
STOW-RS requests running at once against a real node."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from pacs_node.api.multipart import build_related


@dataclass
class Tally:
    """What the senders got back (thread-safe)."""

    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ok: int, failure: str | None = None) -> None:
        with self._lock:
            self.sent += ok
            if failure is not None:
                self.failures.append(failure)


def cstore(port: int, called_aet: str, datasets: Sequence[Dataset], tally: Tally) -> None:
    """One association sending ``datasets`` in turn."""
    ae = AE(ae_title="LOADGEN")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
    if not assoc.is_established:
        tally.add(0, "association not established")
        return
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if "Status" in status else -1
            tally.add(1 if code == 0 else 0, None if code == 0 else f"C-STORE 0x{code:04X}")
    finally:
        assoc.release()


def stow(base_url: str, token: str, datasets: Sequence[Dataset], tally: Tally) -> None:
    """One STOW-RS request carrying ``datasets``, with a ``dicomweb-write`` token."""
    parts = []
    for ds in datasets:
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        parts.append((buffer.getvalue(), "application/dicom"))
    chunks, header = build_related(parts, "application/dicom")
    response = httpx.post(f"{base_url}/dicom-web/studies", content=b"".join(chunks),
                          headers={"Content-Type": header, "Authorization": f"Bearer {token}"},
                          timeout=120)  # fmt: skip
    ok = response.status_code == 200
    tally.add(len(datasets) if ok else 0, None if ok else f"STOW-RS {response.status_code}")


def run_all(jobs: Sequence[Callable[[], None]]) -> None:
    """Start every sender at once and wait for all of them."""
    threads = [threading.Thread(target=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
