"""C-STORE sender returning one typed result per instance."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from pacs_node.errors import DispatchError, StorageError
from pacs_node.settings import CStoreDestination, SendSettings

logger = logging.getLogger(__name__)


def acknowledged(status: int | None) -> bool:
    """Whether a C-STORE status means stored: success or warning (PS3.4 B.2.3)."""
    return status is not None and code_to_category(status) in ("Success", "Warning")


@dataclass(frozen=True)
class SendResult:
    """The peer's answer for one instance; ``status`` None means no answer came."""

    sop_instance_uid: str
    status: int | None
    message: str

    @property
    def ok(self) -> bool:
        """Whether the peer stored the instance."""
        return acknowledged(self.status)


def send_c_store(
    destination: CStoreDestination,
    paths: Sequence[Path],
    *,
    calling_ae_title: str,
    settings: SendSettings,
) -> list[SendResult]:
    """Send the files at ``paths`` to ``destination`` on one association.

    Returns
    -------
    list[SendResult]
        One per file, in order, with the peer's status for each.

    Raises
    ------
    DispatchError
        When no association can be established (peer down, rejected, aborted).
    StorageError
        When a file to send cannot be read.
    """
    datasets = []
    for path in paths:
        try:
            datasets.append(pydicom.dcmread(path))
        except OSError as exc:
            raise StorageError(f"cannot read derived file {path}: {exc}") from exc
    ae = AE(ae_title=calling_ae_title)
    ae.connection_timeout = settings.connect_timeout_s
    ae.acse_timeout = settings.acse_timeout_s
    ae.dimse_timeout = settings.dimse_timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted or unreachable"
        raise DispatchError(f"association with {destination} {reason}")
    results: list[SendResult] = []
    try:
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if not assoc.is_established:
                results.append(SendResult(uid, None, "association lost before sending"))
                continue
            try:
                response = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:
                results.append(SendResult(uid, None, f"not sent: {exc}"))
                continue
            if "Status" not in response:
                results.append(SendResult(uid, None, "no response (timeout or abort)"))
                continue
            status = int(response.Status)
            comment = str(response.get("ErrorComment", "") or "")
            results.append(SendResult(uid, status, f"{code_to_category(status)} {comment}".strip()))
    finally:
        if assoc.is_established:
            assoc.release()
    failed = sum(not r.ok for r in results)
    logger.info("sent %d instances to %s, %d failed", len(results), destination, failed)
    return results
