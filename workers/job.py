"""``run_job``: load a received series, enhance it, build the derived series, send it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator
from pydicom.dataset import FileDataset

from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobView, OutputView
from pacs_node.errors import DispatchError, InvalidSeriesError, ModelError
from pacs_node.pipeline import enhance_series
from pacs_node.qa import QAReport
from pacs_node.routing import StowDestination
from pacs_node.scu import SendResult, acknowledged, send_c_store, send_stow
from pacs_node.settings import CStoreDestination
from pacs_node.wado import fetch_series_instances
from workers.context import WorkerContext
from workers.upload import upload_outputs

logger = logging.getLogger(__name__)


def _input_paths(ctx: WorkerContext, job: JobView) -> list[Path]:
    """The job's received files: the node's own, or (``worker.node_url`` set, another
    host) fetched by WADO-RS into this worker's data directory."""
    inputs = ctx.repository.job_inputs(job.id)
    worker = ctx.settings.worker
    if worker.node_url:
        token = worker.node_token.get_secret_value() if worker.node_token else None
        return fetch_series_instances(
            worker.node_url, job.study_instance_uid, job.series_instance_uid,
            [item.sop_instance_uid for item in inputs], ctx.store, token=token,
        )  # fmt: skip
    return [Path(item.path) for item in inputs]


def _enhance_and_write(ctx: WorkerContext, job: JobView) -> tuple[list[Path], QAReport | None]:
    """Enhance the job's series and store its derived instances (none when the output
    cannot be written); the paths and the gate's report."""
    assert job.preset is not None  # jobs without a preset are SKIPPED, never queued
    enhancer = ctx.enhancers.get(job.preset, job.strength)
    sources = _input_paths(ctx, job)
    # With worker.pipelined, derived instances are written as the model finishes their
    # slices; nothing is recorded or sent before the whole series is written and gated.
    written: dict[str, Path] = {}
    tried: list[Path] = []  # every path this run wrote or began to write

    def write(ds: FileDataset) -> None:
        path = ctx.store.derived_path(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        tried.append(path)
        ctx.store.write_dataset(path, ds)
        written[str(ds.SOPInstanceUID)] = path  # only once the file is whole

    def forget() -> None:
        """Remove the files of an output that is not recorded, but none that an output
        row names (an earlier run's, or another job's, with the same derived UIDs)."""
        try:
            named = ctx.repository.output_paths_in_use([str(p) for p in tried])
        except Exception:  # noqa: BLE001 - the database cannot say: keep them (audit reports)
            logger.warning("job %d: %d derived files kept: the database cannot say which "
                           "are in use", job.id, len(tried))  # fmt: skip
            return
        _remove(p for p in tried if str(p) not in named)

    try:
        result = enhance_series(
            sources,
            job.preset,
            enhancer,
            ctx.settings.derived,
            ctx.repository.used_series_numbers(job.study_instance_uid),
            gate=ctx.enhancers.gate(job.preset),
            sink=write if ctx.settings.worker.pipelined else None,
        )
        if not result.datasets:
            forget()
            return [], result.qa
        series_uid = result.series_instance_uid
        # The derived series first, then the uncertainty map (a secondary series), if any.
        everything = [*result.datasets, *result.uncertainty]
        for ds in everything:
            if str(ds.SOPInstanceUID) not in written:  # not streamed (or built again after)
                write(ds)
        paths = [written[str(ds.SOPInstanceUID)] for ds in everything]
        sop_uids = [str(ds.SOPInstanceUID) for ds in everything]
        stored = [str(p) for p in paths]
        worker = ctx.settings.worker
        if worker.node_url:  # another host: the node keeps the series it serves and retains
            assert worker.node_token is not None  # required with node_url by the settings
            stored = upload_outputs(worker.node_url, worker.node_token.get_secret_value(),
                                    job.id, list(zip(sop_uids, paths, strict=True)))  # fmt: skip
    except BaseException:
        forget()  # the builder thread has ended: enhance_series waits for it
        raise
    # From here rows may name the files (a failed commit may have committed): kept.
    count = len(result.datasets)
    map_uid = str(result.uncertainty[0].SeriesInstanceUID) if result.uncertainty else ""
    ctx.repository.replace_outputs(
        job.id,
        series_uid,
        zip(sop_uids[:count], result.sources, stored[:count], strict=True),
        [(sop, source, path, map_uid) for sop, source, path
         in zip(sop_uids[count:], result.sources, stored[count:], strict=True)]
        if map_uid else [],
    )  # fmt: skip
    ctx.repository.add_event(
        job.id,
        f"{result.model.name} {result.model.version} enhanced {count} slices in "
        f"{result.seconds:.2f} s; derived series {series_uid}"
        + (f"; uncertainty map series {map_uid}" if map_uid else "")
        + (f"; {result.uncertainty_problem}" if result.uncertainty_problem else ""),
    )
    return paths, result.qa


def _remove(paths: Iterable[Path]) -> None:
    """Remove derived files written for an output that is not recorded."""
    for path in paths:
        path.unlink(missing_ok=True)


def _apply_gate(ctx: WorkerContext, job: JobView, report: QAReport) -> JobStatus | None:
    """Record the gate's report; for a failed output, follow the job's failure policy.

    Returns None when the output may be sent (it passed, or an admin released it), else
    the status the job ended in: FAILED (``fail``), HELD (``hold``) or SKIPPED with the
    source forwarded untouched (``send_original``). An output that cannot be written at
    all (wrong grid, NaN or Inf) cannot be held: ``hold`` fails it instead.
    """
    repo, me = ctx.repository, ctx.name
    earlier = job.qa or {}
    policy = job.qa_policy or ctx.settings.qa.failure_policy
    data = report.to_json()
    data["policy"] = policy
    summary = report.summary()
    if report.verdict == "pass" or (earlier.get("released_by") and report.usable):
        if report.verdict == "fail":
            data.update(released_by=earlier["released_by"], released_at=earlier.get("released_at"))
            summary += f"; released by {earlier['released_by']}: sent anyway"
        data["action"] = "send"
        repo.record_qa(job.id, data, summary, owner=me)
        return None
    action = "fail" if policy == "hold" and not report.usable else policy
    data["action"] = action
    repo.record_qa(job.id, data, summary, owner=me)
    logger.warning("job %d: %s; policy %s", job.id, summary, policy)
    if action == "hold":
        repo.qa_outcome(job.id, JobStatus.HELD,
                        "held: nothing is sent until an admin releases or rejects the output",
                        owner=me)  # fmt: skip
        return JobStatus.HELD
    if action == "send_original":
        repo.qa_outcome(job.id, JobStatus.SKIPPED,
                        "the derived series failed the QA gate and is not sent; skipped: the "
                        "original series is forwarded untouched instead", owner=me)  # fmt: skip
        return JobStatus.SKIPPED
    reason = summary
    if policy == "hold":
        reason += "; the output cannot be written, so it cannot be held"
    repo.transition(job.id, JobStatus.FAILED, reason, error_code="qa_failed", owner=me)
    return JobStatus.FAILED


def _local_output(ctx: WorkerContext, job: JobView, output: OutputView) -> Path:
    series_uid = output.series_instance_uid or job.output_series_instance_uid
    assert series_uid is not None
    return ctx.store.derived_path(series_uid, output.sop_instance_uid)


def _drop_local_copies(ctx: WorkerContext, job: JobView) -> None:
    """On another host, once the job is DONE: its fetched inputs and derived files (the
    node keeps both). A file that is the node's own (a worker given ``node_url`` but
    sharing the node's data directory) is never touched."""
    if not ctx.settings.worker.node_url:
        return
    job = ctx.repository.get_job(job.id) or job
    local = {ctx.store.received_path(i.sop_instance_uid): Path(i.path)
             for i in ctx.repository.job_inputs(job.id)}  # fmt: skip
    if job.output_series_instance_uid is not None:
        local.update({_local_output(ctx, job, o): Path(o.path) for o in job.outputs})
    for copy, nodes_file in local.items():
        if copy.resolve() != nodes_file.resolve():
            copy.unlink(missing_ok=True)


def _pending_outputs(ctx: WorkerContext, job: JobView) -> list[Path] | None:
    """On a retry: the derived files of an earlier attempt that the destination has not
    acknowledged yet, so a failed send repeats neither the model nor the stored instances.
    None when there is no complete earlier output, or the QA gate stopped it and no admin
    released it (then the series is enhanced anew)."""
    if not job.outputs or job.output_series_instance_uid is None:
        return None
    qa = job.qa or {}
    passed = qa.get("action") == "send" or bool(qa.get("released_by"))
    if ctx.settings.qa.enabled and not passed:
        return None  # not measured, or stopped by the gate: only a fresh run may send
    # This worker's own copies: the node's files, or on another host its local ones.
    local = {o.sop_instance_uid: _local_output(ctx, job, o) for o in job.outputs}
    if not all(path.is_file() for path in local.values()):
        return None
    pending = [local[o.sop_instance_uid] for o in job.outputs if not acknowledged(o.send_status)]
    ctx.repository.add_event(
        job.id, f"reusing derived series {job.output_series_instance_uid}; {len(pending)} to send"
    )
    return pending


class _Unresolved(BaseModel):
    """A destination the receiving node could not resolve (e.g. an unknown sender)."""

    kind: Literal["unresolved"]
    reason: str

    @model_validator(mode="after")
    def _refuse(self) -> _Unresolved:
        raise ValueError(self.reason)


_DESTINATION: TypeAdapter[CStoreDestination | StowDestination | _Unresolved] = TypeAdapter(
    Annotated[CStoreDestination | StowDestination | _Unresolved, Field(discriminator="kind")]
)


def _send_everywhere(
    ctx: WorkerContext, destinations: list[Any], paths: list[Path]
) -> list[SendResult]:
    """Send ``paths`` to every destination; per instance the first failure, if any, wins.

    A destination that cannot be reached at all counts as a failure of each instance, so
    a retry sends the unacknowledged instances to every destination again (PACS accept a
    repeated SOP Instance UID).
    """
    per_instance: dict[str, list[tuple[str, SendResult]]] = {}
    uids: list[str] = []
    unreachable: list[DispatchError] = []
    for destination in destinations:
        try:
            if isinstance(destination, StowDestination):
                results = send_stow(destination, paths, settings=ctx.settings.send)
            else:
                results = send_c_store(
                    destination, paths, calling_ae_title=ctx.settings.ae_title,
                    settings=ctx.settings.send, tls=ctx.settings.tls,
                )  # fmt: skip
        except DispatchError as exc:
            if len(destinations) == 1:
                raise
            unreachable.append(exc)
            logger.warning("%s", exc)
            continue
        for result in results:
            if result.sop_instance_uid not in per_instance:
                uids.append(result.sop_instance_uid)
            per_instance.setdefault(result.sop_instance_uid, []).append((str(destination), result))
    if unreachable and not per_instance:
        raise unreachable[0]
    combined = []
    for uid in uids:
        answers = per_instance[uid]
        worst = next((r for _, r in answers if not r.ok), answers[0][1])
        message = "; ".join(f"{name}: {r.message}" for name, r in answers)
        if unreachable:
            worst = SendResult(uid, None, "")
            message += "; " + "; ".join(str(e) for e in unreachable)
        combined.append(SendResult(uid, worst.status, message))
    return combined


def forward_job(job_id: int, ctx: WorkerContext) -> bool:
    """Send a SKIPPED job's received instances untouched to its destinations.

    The job stays SKIPPED, the outcome a line of its audit trail. Returns False when there
    is nothing to do (not SKIPPED), or when the destinations or the series are unusable
    (then the job is FAILED with the reason, as a forward that cannot succeed).

    Raises
    ------
    DispatchError
        A destination is unreachable or refused instances (the task retries).
    """
    repo = ctx.repository
    job = repo.get_job(job_id)
    if job is None or job.status is not JobStatus.SKIPPED:
        return False
    try:
        destinations = [_DESTINATION.validate_python(d) for d in job.destinations]
    except (ValidationError, ValueError) as exc:
        repo.forward_failed(job_id, str(exc), None, ctx.settings.worker.max_attempts)
        return False
    try:
        paths = _input_paths(ctx, job)
    except InvalidSeriesError as exc:
        repo.forward_failed(job_id, str(exc), None, ctx.settings.worker.max_attempts)
        return False
    results = _send_everywhere(ctx, destinations, paths)
    failed = [r for r in results if not r.ok]
    names = ", ".join(str(d) for d in destinations)
    if failed:
        raise DispatchError(
            f"forwarding: {len(failed)} of {len(results)} instances not stored by {names} "
            f"(first: {failed[0].message})"
        )
    repo.add_event(job_id, f"forwarded untouched: {len(results)} instances stored by {names}")
    return True


def run_job(job_id: int, ctx: WorkerContext) -> JobStatus | None:
    """Run one job from QUEUED to DONE or FAILED.

    Returns None when the job was not QUEUED (a duplicate task), else its final status.
    ``DispatchError`` (destination down, instances refused) propagates after the job is
    left in SENDING so the caller can retry or fail it; every other enhancement error
    marks the job FAILED with its reason.
    """
    repo = ctx.repository
    me = ctx.name  # transitions below hold only while this worker holds the job's lease
    if not repo.claim(job_id, worker=me, lease=timedelta(seconds=ctx.settings.worker.lease_s)):
        logger.info("job %d is not QUEUED; nothing to do", job_id)
        return None
    job = repo.get_job(job_id)
    assert job is not None
    try:
        paths = _pending_outputs(ctx, job)
        if paths is None:
            paths, report = _enhance_and_write(ctx, job)
            outcome = _apply_gate(ctx, job, report) if report is not None else None
            if outcome is not None:
                return outcome
            if not paths:
                raise ModelError(f"preset {job.preset} produced no derived instance")
    except (InvalidSeriesError, ModelError) as exc:
        repo.transition(job_id, JobStatus.FAILED, str(exc), error_code=exc.code, owner=me)
        logger.warning("job %d failed: %s", job_id, exc)
        return JobStatus.FAILED
    # Destinations were chosen by the receiving node's routing rule when the job was
    # created, so a worker on another host needs no routing configuration of its own.
    try:
        destinations = [_DESTINATION.validate_python(d) for d in job.destinations]
    except (ValidationError, ValueError) as exc:
        repo.transition(job_id, JobStatus.FAILED, str(exc), error_code="destination", owner=me)
        return JobStatus.FAILED
    if not destinations:
        repo.transition(
            job_id, JobStatus.DONE, "no destination configured; derived series kept on the node",
            owner=me,
        )  # fmt: skip
        _drop_local_copies(ctx, job)
        return JobStatus.DONE
    names = ", ".join(str(d) for d in destinations)
    total = len(job.outputs) or len(paths)
    if not paths:  # every instance was acknowledged before an interruption
        repo.transition(
            job_id, JobStatus.DONE, f"all {total} instances stored by {names}", owner=me
        )
        _drop_local_copies(ctx, job)
        return JobStatus.DONE
    repo.transition(
        job_id, JobStatus.SENDING, f"sending {len(paths)} instances to {names}", owner=me
    )
    results = _send_everywhere(ctx, destinations, paths)
    repo.record_send_results(job_id, [(r.sop_instance_uid, r.status, r.message) for r in results])
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0]
        status = f"0x{first.status:04X}" if first.status is not None else "no status"
        raise DispatchError(
            f"{len(failed)} of {len(results)} instances not stored by every destination "
            f"(first: {status} {first.message})"
        )
    repo.transition(job_id, JobStatus.DONE, f"all {total} instances stored by {names}", owner=me)
    _drop_local_copies(ctx, job)
    return JobStatus.DONE
