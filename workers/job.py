"""``run_job``: load a received series, enhance it, build the derived series, send it."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

from models.base import ModelInfo
from models.registry import UnknownPresetError, get_preset
from pacs_node import __version__
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobView
from pacs_node.dicom.derived import (
    SMOOTHING,
    DerivationInfo,
    build_derived_series,
    choose_series_number,
)
from pacs_node.dicom.volume import load_series
from pacs_node.errors import DispatchError, InvalidSeriesError, ModelError
from pacs_node.scu import acknowledged, send_c_store
from pacs_node.settings import CStoreDestination
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

# Image derivation codes, CID 7203 (PS3.16): what was done to the pixels. CID 7203 has
# no "noise reduction" concept; Smoothing is the closest for every denoiser.
_DERIVATION_CODES: dict[str, tuple[str, str, str]] = {
    "denoise": SMOOTHING,
    "identity": SMOOTHING,
}


def _derivation_info(
    ctx: WorkerContext, job: JobView, model: ModelInfo, source_number: int | None
) -> DerivationInfo:
    derived = ctx.settings.derived
    used = ctx.repository.used_series_numbers(job.study_instance_uid)
    return DerivationInfo(
        preset=job.preset,
        model_name=model.name,
        model_version=model.version,
        weights_sha256=model.weights_sha256,
        description=(
            f"Enhanced by {derived.manufacturer} {__version__}, preset {job.preset}: "
            f"{model.description}; model {model.name} {model.version}, "
            f"sha256 {model.weights_sha256[:16]}"
        ),
        derivation_code=_DERIVATION_CODES.get(model.task, _DERIVATION_CODES["denoise"]),
        series_description_template=derived.series_description_template,
        series_number=choose_series_number(source_number, used, derived.series_number_offset),
        manufacturer=derived.manufacturer,
        equipment_model_name=derived.equipment_model_name,
        software_versions=__version__,
    )


def _enhance_and_write(ctx: WorkerContext, job: JobView) -> list[Path]:
    inputs = ctx.repository.job_inputs(job.id)
    volume = load_series([Path(item.path) for item in inputs])
    try:
        model = get_preset(job.preset, device=ctx.settings.device)
    except UnknownPresetError as exc:
        raise ModelError(str(exc)) from exc
    started = time.perf_counter()
    try:
        values, spacing = model(volume.values, volume.spacing_mm)
    except (RuntimeError, ValueError, MemoryError) as exc:
        raise ModelError(f"model {model.info.name} failed: {exc}") from exc
    if values.shape != volume.values.shape or spacing != volume.spacing_mm:
        raise ModelError(
            f"model {model.info.name} changed the geometry {volume.values.shape} -> "
            f"{values.shape}; only same-grid models are supported by this node version"
        )
    seconds = time.perf_counter() - started
    source_number = volume.datasets[0].get("SeriesNumber")
    info = _derivation_info(
        ctx, job, model.info, int(source_number) if source_number not in (None, "") else None
    )
    derived = build_derived_series(volume.datasets, values, info, datetime.now(UTC))
    series_uid = str(derived[0].SeriesInstanceUID)
    outputs: list[tuple[str, str, str]] = []
    paths: list[Path] = []
    for ds, source in zip(derived, volume.datasets, strict=True):
        buffer = DicomBytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        path = ctx.store.derived_path(series_uid, str(ds.SOPInstanceUID))
        ctx.store.write_atomic(path, buffer.getvalue())
        outputs.append((str(ds.SOPInstanceUID), str(source.SOPInstanceUID), str(path)))
        paths.append(path)
    ctx.repository.replace_outputs(job.id, series_uid, outputs)
    ctx.repository.add_event(
        job.id,
        f"{model.info.name} {model.info.version} enhanced {len(derived)} slices in "
        f"{seconds:.2f} s; derived series {series_uid}",
    )
    return paths


def _pending_outputs(ctx: WorkerContext, job: JobView) -> list[Path]:
    """On a retry: the derived files of an earlier attempt that the destination has not
    acknowledged yet, so a failed send repeats neither the model nor the stored instances.
    Empty when there is no complete earlier output (then the series is enhanced anew)."""
    if not job.outputs or not all(Path(o.path).is_file() for o in job.outputs):
        return []
    pending = [Path(o.path) for o in job.outputs if not acknowledged(o.send_status)]
    ctx.repository.add_event(
        job.id, f"reusing derived series {job.output_series_instance_uid}; {len(pending)} to send"
    )
    return pending


def run_job(job_id: int, ctx: WorkerContext) -> JobStatus | None:
    """Run one job from QUEUED to DONE or FAILED.

    Returns None when the job was not QUEUED (a duplicate task), else its final status.
    ``DispatchError`` (destination down, instances refused) propagates after the job is
    left in SENDING so the caller can retry or fail it; every other enhancement error
    marks the job FAILED with its reason.
    """
    repo = ctx.repository
    if not repo.claim(job_id, worker=ctx.name):
        logger.info("job %d is not QUEUED; nothing to do", job_id)
        return None
    job = repo.get_job(job_id)
    assert job is not None
    try:
        paths = _pending_outputs(ctx, job) or _enhance_and_write(ctx, job)
    except (InvalidSeriesError, ModelError) as exc:
        repo.transition(job_id, JobStatus.FAILED, str(exc), error_code=exc.code)
        logger.warning("job %d failed: %s", job_id, exc)
        return JobStatus.FAILED
    # The destination was chosen by the receiving node when the job was created, so a
    # worker on another host needs no destination configuration of its own.
    destination = CStoreDestination.parse(job.destination) if job.destination else None
    if destination is None:
        repo.transition(
            job_id, JobStatus.DONE, "no destination configured; derived series kept on the node"
        )
        return JobStatus.DONE
    repo.transition(job_id, JobStatus.SENDING, f"sending {len(paths)} instances to {destination}")
    results = send_c_store(
        destination, paths, calling_ae_title=ctx.settings.ae_title, settings=ctx.settings.send
    )
    repo.record_send_results(job_id, [(r.sop_instance_uid, r.status, r.message) for r in results])
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0]
        status = f"0x{first.status:04X}" if first.status is not None else "no status"
        raise DispatchError(
            f"{len(failed)} of {len(results)} instances not stored by {destination} "
            f"(first: {status} {first.message})"
        )
    repo.transition(
        job_id,
        JobStatus.DONE,
        f"all {len(job.outputs) or len(results)} instances stored by {destination}",
    )
    return JobStatus.DONE
