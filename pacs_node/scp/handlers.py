"""pynetdicom event handlers: each returns a DIMSE status and never raises."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs_node.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    SUCCESS,
    IngestResult,
    Origin,
    Receiver,
)
from pacs_node.routing import Routing

logger = logging.getLogger(__name__)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # Error Comment is LO: at most 64 characters (PS3.7 C.4.2.1.1).
    status.ErrorComment = comment[:64]
    return status


def handle_requested(event: Event, routing: Routing) -> None:
    """Admission control on an A-ASSOCIATE request, before negotiation.

    An unknown called AE title (not one of the pipelines) is rejected with diagnostic 7, a
    caller the pipeline does not allow with diagnostic 3 (A-ASSOCIATE-RJ, rejected-permanent,
    service-user: PS3.8 9.3.4). An accepted association answers with the called pipeline's
    AE title and offers only the SOP classes that pipeline accepts.
    """
    requestor = event.assoc.requestor
    request = requestor.primitive
    assert request is not None  # EVT_REQUESTED fires once the request has arrived
    called = str(request.called_ae_title).strip()
    calling = str(request.calling_ae_title).strip()
    problem = routing.admission_problem(called, calling, requestor.address)
    if problem is not None:
        diagnostic, reason = problem
        logger.warning("association from %s (%s) rejected: %s", calling, requestor.address, reason)
        event.assoc.acse.send_reject(0x01, 0x01, diagnostic)
        # As pynetdicom's own rejection does: stop the DUL once the A-ASSOCIATE-RJ is out.
        event.assoc.kill()
        return
    pipeline = routing.pipelines[called]
    event.assoc.acceptor.ae_title = pipeline.ae_title
    if pipeline.sop_classes:
        allowed = {*pipeline.sop_classes, Verification}
        event.assoc.acceptor.supported_contexts = [
            cx for cx in event.assoc.acceptor.supported_contexts if cx.abstract_syntax in allowed
        ]


def handle_store(event: Event, receiver: Receiver) -> int | Dataset:
    """Store one instance durably and record it in SQL before answering success.

    Returns a C-STORE status: success (also for a duplicate SOP Instance UID, which
    is not stored twice), 0xC210 when the dataset cannot be decoded or its pixel data
    is truncated, 0xA900 when identifiers or pixel data are missing, 0xA700 when the
    disk or the database fails.
    """
    request = event.request
    assert isinstance(request, C_STORE)  # bound to EVT_C_STORE only
    requested_uid = str(request.AffectedSOPInstanceUID)
    calling = event.assoc.requestor.ae_title
    called = event.assoc.acceptor.ae_title
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        if str(ds.get("SOPInstanceUID", "") or "") not in ("", requested_uid):
            comment = "SOPInstanceUID differs from the Affected SOP Instance UID"
            logger.warning("C-STORE %s from %s refused: %s", requested_uid, calling, comment)
            receiver.count("C-STORE", IngestResult(DATASET_DOES_NOT_MATCH_SOP_CLASS, comment))
            return _status(DATASET_DOES_NOT_MATCH_SOP_CLASS, comment)
        encoded = event.encoded_dataset(include_meta=True)
    except Exception as exc:  # noqa: BLE001 - edge: any decode failure becomes a status
        logger.warning("C-STORE %s from %s: cannot decode dataset: %s", requested_uid, calling, exc)
        receiver.count("C-STORE", IngestResult(CANNOT_UNDERSTAND, str(exc)))
        return _status(CANNOT_UNDERSTAND, f"cannot decode dataset: {exc}")
    result = receiver.accept(
        ds,
        encoded,
        str(event.context.transfer_syntax),
        Origin(calling, called, f"{calling} (C-STORE)"),
    )
    if result.status == SUCCESS:
        return SUCCESS
    return _status(result.status, result.message or "")
