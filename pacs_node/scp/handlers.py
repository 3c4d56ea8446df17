"""pynetdicom event handlers: each returns a DIMSE status and never raises."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pacs_node.db.repository import JobRepository, ReceivedInstance
from pacs_node.errors import EnhancementError
from pacs_node.scp.validation import is_image_storage, missing_identifiers, pixel_data_problem
from pacs_node.storage import InstanceStore

logger = logging.getLogger(__name__)

# Storage service statuses (PS3.4 Annex B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210


@dataclass(frozen=True)
class ReceiveContext:
    """What the store handler needs besides the event: bound when the server starts."""

    store: InstanceStore
    repository: JobRepository
    preset: str
    destination: str | None


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # Error Comment is LO: at most 64 characters (PS3.7 C.4.2.1.1).
    status.ErrorComment = comment[:64]
    return status


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def handle_store(event: Event, context: ReceiveContext) -> int | Dataset:
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
    transfer_syntax = str(event.context.transfer_syntax)
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        problem = missing_identifiers(ds)
        sop_class = str(ds.get("SOPClassUID", ""))
        if problem is None and str(ds.SOPInstanceUID) != requested_uid:
            problem = "SOPInstanceUID differs from the Affected SOP Instance UID"
        if problem is None and is_image_storage(sop_class):
            problem = pixel_data_problem(ds, transfer_syntax)
            code = CANNOT_UNDERSTAND if problem and "truncated" in problem else None
        else:
            code = None
    except Exception as exc:  # noqa: BLE001 - edge: any decode failure becomes a status
        logger.warning("C-STORE %s from %s: cannot decode dataset: %s", requested_uid, calling, exc)
        return _status(CANNOT_UNDERSTAND, f"cannot decode dataset: {exc}")
    if problem is not None:
        logger.warning("C-STORE %s from %s refused: %s", requested_uid, calling, problem)
        return _status(code or DATASET_DOES_NOT_MATCH_SOP_CLASS, problem)

    try:
        if context.repository.find_instance(requested_uid):
            logger.info("C-STORE %s from %s: duplicate, already stored", requested_uid, calling)
            return SUCCESS
        path = context.store.received_path(requested_uid)
        data = event.encoded_dataset(include_meta=True)
        context.store.write_atomic(path, data)
        outcome = context.repository.record_instance(
            ReceivedInstance(
                sop_instance_uid=requested_uid,
                sop_class_uid=sop_class,
                transfer_syntax_uid=transfer_syntax,
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                modality=str(ds.get("Modality", "") or "") or None,
                series_number=_int_or_none(ds.get("SeriesNumber")),
                series_description=str(ds.get("SeriesDescription", "") or "")[:64] or None,
                path=str(path),
                size_bytes=len(data),
                calling_ae_title=calling,
                called_ae_title=called,
            ),
            preset=context.preset,
            destination=context.destination,
        )
    except EnhancementError as exc:
        logger.error("C-STORE %s from %s: storage failed: %s", requested_uid, calling, exc)
        return _status(OUT_OF_RESOURCES, str(exc))
    except Exception as exc:  # edge: database or disk failure → out of resources
        logger.exception("C-STORE %s from %s: could not record instance", requested_uid, calling)
        return _status(OUT_OF_RESOURCES, f"could not record instance: {type(exc).__name__}")
    if outcome.duplicate:
        logger.info("C-STORE %s from %s: duplicate, already stored", requested_uid, calling)
    else:
        logger.debug("C-STORE %s stored for job %s", requested_uid, outcome.job_id)
    return SUCCESS
