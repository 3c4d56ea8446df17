"""Jobs filed as the receiving node would file them, for tests of ``run_job``."""

from __future__ import annotations

from datetime import timedelta

from pydicom.dataset import FileDataset
from pydicom.filebase import DicomBytesIO

from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository, ReceivedInstance, Route
from pacs_node.settings import CStoreDestination
from pacs_node.storage import InstanceStore
from workers.context import WorkerContext


def queue_series(
    ctx: WorkerContext,
    datasets: list[FileDataset],
    *,
    preset: str,
    destination: str | None = None,
    qa_failure: str | None = None,
) -> int:
    """File the datasets as the SCP would and close the series: a QUEUED job's id
    (``destination`` as ``AET@host:port``; ``qa_failure`` the rule's QA policy)."""
    store: InstanceStore = ctx.store
    repo: JobRepository = ctx.repository
    destinations = [CStoreDestination.parse(destination).model_dump()] if destination else []
    job_id = None
    for ds in datasets:
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        path = store.received_path(str(ds.SOPInstanceUID))
        store.write_atomic(path, buffer.getvalue())
        job_id = repo.record_instance(
            ReceivedInstance(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                modality=str(ds.Modality),
                series_number=int(ds.SeriesNumber),
                series_description=str(ds.SeriesDescription),
                path=str(path),
                size_bytes=len(buffer.getvalue()),
                calling_ae_title="SCANNER",
                called_ae_title="ENHANCE",
            ),
            Route(preset, destinations, qa_failure=qa_failure),
        ).job_id
    assert job_id is not None
    assert repo.close_receiving(job_id, timedelta(0), None) is JobStatus.QUEUED
    return job_id
