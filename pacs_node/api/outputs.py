"""Derived instances uploaded back by workers on other hosts (``worker.node_url``), so the
node holds every derived series it serves (QIDO/WADO-RS, the viewer, retention) without a
shared disk."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from starlette.concurrency import run_in_threadpool

from pacs_node.admin import Principal
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository
from pacs_node.dicom.validation import identifier_problem
from pacs_node.ingest import Receiver

DICOM = "application/dicom"


def create_outputs_router(
    repository: JobRepository, receiver: Receiver | None, principal: Callable[..., Principal]
) -> APIRouter:
    """``PUT /api/jobs/{id}/outputs/{sop_uid}``: store one derived instance of a running
    job under the node's data directory; answers the path it was stored at."""
    router = APIRouter(tags=["workers"])

    @router.put("/api/jobs/{job_id}/outputs/{sop_instance_uid}", status_code=201)
    async def upload_output(
        job_id: int, sop_instance_uid: str, request: Request, who: Principal = Depends(principal)
    ) -> dict[str, Any]:
        """A derived instance of job ``job_id`` (body: one ``application/dicom`` Part 10
        file), accepted only while the job runs (else 409) and only for the job's study
        (else 422)."""
        if not who.uploads_outputs:
            raise HTTPException(403, f"token {who.name!r} has role {who.role}; worker required")
        if receiver is None:
            raise HTTPException(503, "this node stores no files")
        full = receiver.disk_refusal()
        if full is not None:  # refused before the body is read: nothing is half-stored
            raise HTTPException(507, full)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != DICOM:
            raise HTTPException(415, f"expected {DICOM}, not {media_type or 'no content type'}")
        job = repository.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        if job.status is not JobStatus.RUNNING:
            raise HTTPException(
                409, f"job {job_id} is {job.status.value}; outputs are accepted while it runs"
            )
        body = await request.body()
        try:
            ds = dcmread(BytesIO(body), stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
            raise HTTPException(400, f"not a DICOM Part 10 file: {exc}") from exc
        missing = identifier_problem(ds)
        if missing is not None:
            raise HTTPException(400, missing)
        sop, series = str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID)
        if sop != sop_instance_uid:
            raise HTTPException(
                400, f"the file's SOP Instance UID is {sop}, not {sop_instance_uid}"
            )
        if not (UID(sop).is_valid and UID(series).is_valid):
            raise HTTPException(400, "the file's SOP Instance or Series Instance UID is malformed")
        if str(ds.StudyInstanceUID) != job.study_instance_uid:
            raise HTTPException(
                422, f"the file belongs to study {ds.StudyInstanceUID}, not to job {job_id}'s"
            )
        path = receiver.store.derived_path(series, sop)
        await run_in_threadpool(receiver.store.write_atomic, path, body)
        return {"job": job_id, "sop_instance_uid": sop, "path": str(path)}

    return router
