"""``run_job`` called directly with real files, a real database and a real storage SCP."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from sqlalchemy import update

from models.noise import ct_like_noise
from pacs_node.admin import JobAdmin
from pacs_node.db.models import Job, JobStatus, utcnow
from pacs_node.db.repository import ReceivedInstance, Route
from pacs_node.errors import DispatchError
from pacs_node.settings import Settings
from tests.helpers.enhancers import FailsAfter, FailsHalfway
from tests.helpers.jobs import queue_series
from tests.helpers.synthetic import make_ct_series
from tests.integration.peers import CaptureSCP, free_port
from workers.context import WorkerContext
from workers.job import forward_job, run_job


@pytest.fixture()
def ctx(tmp_path: Path, db_url: str) -> WorkerContext:
    return WorkerContext.from_settings(Settings(data_dir=tmp_path, database_url=db_url))


def test_identity_preset_returns_hu_exact_derived_series(ctx: WorkerContext) -> None:
    sources = make_ct_series(None, n_slices=5, rows=48, cols=48, tilt_deg=12.0)
    with CaptureSCP("PACS") as pacs:
        job_id = queue_series(
            ctx, sources, preset="identity", destination=f"PACS@127.0.0.1:{pacs.port}"
        )
        assert run_job(job_id, ctx) is JobStatus.DONE
        received = pacs.wait_for(5, timeout_s=10)
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.DONE
    assert [e.status for e in job.events] == [
        JobStatus.RECEIVING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RUNNING,
        JobStatus.RUNNING, JobStatus.SENDING, JobStatus.DONE,
    ]  # fmt: skip
    assert job.events[4].message.startswith("QA passed: ")  # the identity's output is its input
    assert job.qa is not None and job.qa["verdict"] == "pass" and job.qa["action"] == "send"
    assert len(job.outputs) == 5 and all(o.send_status == 0 for o in job.outputs)
    by_source = {str(s.SOPInstanceUID): s for s in sources}
    for ds in received:
        source_uid = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        source = by_source[source_uid]
        assert ds.SeriesInstanceUID == job.output_series_instance_uid
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.ImagePositionPatient == source.ImagePositionPatient
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        src_hu = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
        np.testing.assert_array_equal(hu, src_hu)


def test_rerun_gives_the_same_derived_uids(ctx: WorkerContext, tmp_path: Path) -> None:
    sources = make_ct_series(None, n_slices=2, rows=32, cols=32)
    first = queue_series(ctx, sources, preset="gaussian")
    assert run_job(first, ctx) is JobStatus.DONE
    other = WorkerContext.from_settings(
        Settings(
            data_dir=tmp_path / "second", database_url=f"sqlite:///{tmp_path / 'second.sqlite'}"
        )
    )
    from pacs_node.db.migrate import upgrade

    upgrade(other.settings.db_url)
    second = queue_series(other, sources, preset="gaussian")
    assert run_job(second, other) is JobStatus.DONE
    a, b = ctx.repository.get_job(first), other.repository.get_job(second)
    assert a is not None and b is not None
    assert a.output_series_instance_uid == b.output_series_instance_uid
    assert sorted(o.sop_instance_uid for o in a.outputs) == sorted(
        o.sop_instance_uid for o in b.outputs
    )


def test_denoiser_changes_pixels_but_keeps_geometry(ctx: WorkerContext) -> None:
    # CT noise as a scanner makes it: correlated, with the filtered-back-projection
    # spectrum the denoiser is trained for (white pixel noise is not CT noise).
    sources = make_ct_series(None, n_slices=3, rows=64, cols=64, noise_hu=0.0)
    noise = ct_like_noise((3, 64, 64), 25.0, np.random.default_rng(0))
    for ds, field in zip(sources, noise, strict=True):
        stored = ds.pixel_array
        info = np.iinfo(stored.dtype)
        noisy_stored = np.clip(np.round(stored + field), info.min, info.max)
        ds.PixelData = noisy_stored.astype(stored.dtype).tobytes()
    job_id = queue_series(ctx, sources, preset="ct-denoise")
    assert run_job(job_id, ctx) is JobStatus.DONE
    job = ctx.repository.get_job(job_id)
    assert job is not None
    derived = [pydicom.dcmread(o.path) for o in job.outputs]
    for ds in derived:
        assert ds.Rows == 64 and ds.Columns == 64
        assert ds.ImageType[0] == "DERIVED"
    noisy = np.stack([s.pixel_array for s in sources]).astype(float)
    smooth = np.stack([d.pixel_array for d in derived]).astype(float)
    assert not np.array_equal(noisy, smooth)
    # Less noise: the high-frequency energy (neighbour differences) drops, while the mean
    # value over the phantom is kept (no HU shift). The phantom, not the air around it:
    # air noise below -1024 HU comes back exactly as sent, by design, so the air's mean moves.
    phantom = noisy > noisy.min() + 500
    assert np.abs(np.diff(smooth, axis=2)).mean() < 0.9 * np.abs(np.diff(noisy, axis=2)).mean()
    assert abs(smooth[phantom].mean() - noisy[phantom].mean()) < 2.0


def test_refused_instances_raise_dispatch_error_with_results_recorded(ctx: WorkerContext) -> None:
    sources = make_ct_series(None, n_slices=2, rows=32, cols=32)
    with CaptureSCP("PACS", store_status=0xA700) as pacs:
        job_id = queue_series(
            ctx, sources, preset="identity", destination=f"PACS@127.0.0.1:{pacs.port}"
        )
        with pytest.raises(DispatchError, match="2 of 2 instances not stored"):
            run_job(job_id, ctx)
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.SENDING
    assert [o.send_status for o in job.outputs] == [0xA700, 0xA700]


def test_unreachable_destination_raises_dispatch_error(ctx: WorkerContext) -> None:
    sources = make_ct_series(None, n_slices=1, rows=32, cols=32)
    job_id = queue_series(
        ctx, sources, preset="identity", destination=f"PACS@127.0.0.1:{free_port()}"
    )
    with pytest.raises(DispatchError, match="association"):
        run_job(job_id, ctx)


def test_slices_of_different_size_fail_the_job_with_a_reason(ctx: WorkerContext) -> None:
    big = make_ct_series(None, n_slices=2, rows=64, cols=64)
    small = make_ct_series(
        None, n_slices=1, rows=32, cols=32, study_uid=str(big[0].StudyInstanceUID),
        series_uid=str(big[0].SeriesInstanceUID),
    )  # fmt: skip
    small[0].ImagePositionPatient = [0.0, 0.0, 100.0]
    job_id = queue_series(ctx, big + small, preset="ct-denoise")
    assert run_job(job_id, ctx) is JobStatus.FAILED
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.error_code == "invalid_series"
    assert job.error_message and "32 x 32 pixels differs from 64 x 64" in job.error_message
    assert job.events[-1].status is JobStatus.FAILED


def test_unknown_preset_fails_the_job(ctx: WorkerContext) -> None:
    job_id = queue_series(ctx, make_ct_series(None, n_slices=1, rows=32, cols=32), preset="nope")
    assert run_job(job_id, ctx) is JobStatus.FAILED
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.error_code == "model_error"
    assert "unknown preset 'nope'" in (job.error_message or "")


def test_a_duplicate_task_does_nothing(ctx: WorkerContext) -> None:
    job_id = queue_series(
        ctx, make_ct_series(None, n_slices=1, rows=32, cols=32), preset="identity"
    )
    assert run_job(job_id, ctx) is JobStatus.DONE
    assert run_job(job_id, ctx) is None
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.attempts == 1


def test_super_resolution_preset_writes_a_finer_grid(tmp_path: Path, db_url: str) -> None:
    from models.checkpoint import ModelCard, save_checkpoint
    from models.networks import build_network

    weights = tmp_path / "weights"
    card = ModelCard(
        name="sr-test", version="0.0.1", task="super_resolution", modality="CT",
        architecture="sr_light", arch_kwargs={"features": 8}, scale_factor=2,
    )  # fmt: skip
    save_checkpoint(weights, build_network("sr_light", features=8), card)
    presets = tmp_path / "presets.yaml"
    # An untrained network: the QA gate stops its output (overshoot, edges; tested in
    # tests/workers/test_qa_gate.py), so this test of the grid lets those two through.
    presets.write_text(
        "sr:\n  description: test SR\n  modality: CT\n  model: sr-test\n"
        "  qa: {range_excess_hu: null, edge_correlation: null}\n"
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        models={"presets_file": presets, "weights_dir": weights},  # type: ignore[arg-type]
    )
    ctx = WorkerContext.from_settings(settings)
    sources = make_ct_series(None, n_slices=3, rows=32, cols=32, pixel_spacing_mm=0.8)
    job_id = queue_series(ctx, sources, preset="sr")
    assert run_job(job_id, ctx) is JobStatus.DONE
    job = ctx.repository.get_job(job_id)
    assert job is not None
    derived = [pydicom.dcmread(o.path) for o in job.outputs]
    for ds in derived:
        assert (ds.Rows, ds.Columns) == (64, 64)
        assert [float(v) for v in ds.PixelSpacing] == [0.4, 0.4]
        assert ds.DerivationCodeSequence[0].CodeValue == "113085"  # Spatial resampling
        assert ds.SourceImageSequence[0].SpatialLocationsPreserved == "NO"
        assert ds.ContributingEquipmentSequence[-1].ContributionDescription.startswith("sr-test")


def test_a_requeued_job_whose_instances_were_all_stored_sends_nothing(ctx: WorkerContext) -> None:
    sources = make_ct_series(None, n_slices=2, rows=32, cols=32)
    with CaptureSCP("PACS") as pacs:
        job_id = queue_series(
            ctx, sources, preset="identity", destination=f"PACS@127.0.0.1:{pacs.port}"
        )
        assert run_job(job_id, ctx) is JobStatus.DONE
        pacs.wait_for(2)
        # As if the worker had died after the stores but before recording DONE: the job is
        # left SENDING under a lease that runs out, and the reconciler takes it back.
        with ctx.repository.session_factory.begin() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                status=JobStatus.SENDING, finished_at=None, lease_owner="gone",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            ))  # fmt: skip
        assert ctx.repository.reclaim_expired(max_attempts=3) == [(job_id, JobStatus.QUEUED)]
        assert run_job(job_id, ctx) is JobStatus.DONE
        assert len(pacs.statuses) == 2  # nothing sent twice
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.events[-1].message.startswith("all 2 instances stored")


def test_a_model_out_of_memory_even_at_the_smallest_batch_fails_with_the_reason(
    tmp_path: Path, db_url: str
) -> None:
    # A memory budget of a few pixels: the engine halves the batch, then the tiles, down
    # to its floor, and the out-of-memory error that remains fails the job with its reason.
    settings = Settings(data_dir=tmp_path, database_url=db_url,
                        models={"max_batch_pixels": 16, "batch_size": 4})  # fmt: skip
    ctx = WorkerContext.from_settings(settings)
    job_id = queue_series(
        ctx, make_ct_series(None, n_slices=3, rows=64, cols=64), preset="ct-denoise"
    )
    assert run_job(job_id, ctx) is JobStatus.FAILED
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.error_code == "model_error"
    assert "memory" in (job.error_message or "").lower()


def test_a_model_fits_after_smaller_batches_and_tiles(tmp_path: Path, db_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=db_url,
                        models={"max_batch_pixels": 2 * 48 * 48, "batch_size": 4})  # fmt: skip
    ctx = WorkerContext.from_settings(settings)
    job_id = queue_series(
        ctx, make_ct_series(None, n_slices=3, rows=64, cols=64), preset="ct-denoise"
    )
    assert run_job(job_id, ctx) is JobStatus.DONE


def test_a_forward_that_cannot_succeed_is_a_dead_letter_with_its_reason(
    ctx: WorkerContext,
) -> None:
    [ds] = make_ct_series(None, n_slices=1, rows=16, cols=16)
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path = ctx.store.received_path(str(ds.SOPInstanceUID))
    ctx.store.write_atomic(path, buffer.getvalue())
    unresolved = {"kind": "unresolved", "reason": "no destination for calling AE 'X'"}
    received = ReceivedInstance(
        sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
        modality="CT", series_number=1, series_description="", path=str(path),
        size_bytes=len(buffer.getvalue()), calling_ae_title="X", called_ae_title="ENHANCE",
    )  # fmt: skip
    job_id = ctx.repository.record_instance(
        received, Route(None, [unresolved], forward_skipped=True)
    ).job_id
    assert job_id is not None
    ctx.repository.close_receiving(job_id, timedelta(0), "no rule enhances it")
    assert forward_job(job_id, ctx) is False
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert job.error_code == "forward_failed"
    assert "no destination for calling AE 'X'" in (job.error_message or "")


def test_a_remote_worker_never_deletes_the_nodes_own_files(tmp_path: Path, db_url: str) -> None:
    from workers.job import _drop_local_copies

    # Misconfigured: node_url set, yet the worker shares the node's data directory.
    settings = Settings(data_dir=tmp_path, database_url=db_url,
                        worker={"node_url": "http://node:8000", "node_token": "pn_x"})  # fmt: skip
    ctx = WorkerContext.from_settings(settings)
    sources = make_ct_series(None, n_slices=2, rows=16, cols=16)
    job_id = queue_series(ctx, sources, preset="identity")
    derived = ctx.store.derived_path("2.25.1", "2.25.2")
    ctx.store.write_atomic(derived, b"DICM")
    ctx.repository.replace_outputs(job_id, "2.25.1", [("2.25.2", "1.1", str(derived))])
    job = ctx.repository.get_job(job_id)
    assert job is not None
    _drop_local_copies(ctx, job)
    inputs = [ctx.store.received_path(str(ds.SOPInstanceUID)) for ds in sources]
    assert all(p.is_file() for p in inputs) and derived.is_file()  # the node's: kept
    # A real copy on another host, with the node's file elsewhere, is deleted.
    ctx.repository.replace_outputs(job_id, "2.25.1", [("2.25.2", "1.1", "/elsewhere/x.dcm")])
    _drop_local_copies(ctx, ctx.repository.get_job(job_id) or job)
    assert not derived.exists()


def _pipelined(tmp_path: Path, db_url: str) -> WorkerContext:
    # Without the QA gate (a noise-free synthetic phantom is not what the gate judges).
    return WorkerContext.from_settings(Settings(
        data_dir=tmp_path, database_url=db_url, qa={"enabled": False},
        worker={"pipelined": True},
    ))  # fmt: skip


def test_derived_files_written_while_the_model_ran_are_removed_when_it_fails(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first derived instance is written while the model still runs; the model then
    # fails, and that file, which no output row names, is removed with the failure.
    ctx = _pipelined(tmp_path, db_url)
    written = threading.Event()
    original = ctx.store.write_dataset

    def write_dataset(path: Path, ds: pydicom.Dataset) -> int:
        size = original(path, ds)
        written.set()
        return size

    monkeypatch.setattr(ctx.store, "write_dataset", write_dataset)
    monkeypatch.setattr(ctx.enhancers, "get", lambda name, strength=None: FailsHalfway(written))
    job_id = queue_series(ctx, make_ct_series(None, n_slices=3, rows=32, cols=32),
                          preset="ct-denoise")  # fmt: skip
    assert run_job(job_id, ctx) is JobStatus.FAILED
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.error_code == "model_error"
    assert "out of luck" in (job.error_message or "")
    assert written.is_set()  # a derived file was on disk before the failure ...
    assert list(ctx.store.derived_dir.rglob("*.dcm")) == []  # ... and is gone


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_job_leaves_exactly_its_outputs_on_disk(
    tmp_path: Path, db_url: str, pipelined: bool
) -> None:
    # Without the QA gate (a noise-free synthetic phantom is not what the gate judges).
    settings = Settings(data_dir=tmp_path, database_url=db_url, qa={"enabled": False},
                        worker={"pipelined": pipelined})  # fmt: skip
    ctx = WorkerContext.from_settings(settings)
    job_id = queue_series(ctx, make_ct_series(None, n_slices=10, rows=48, cols=48),
                          preset="ct-denoise-fast")  # fmt: skip
    assert run_job(job_id, ctx) is JobStatus.DONE  # no destination: kept on the node
    job = ctx.repository.get_job(job_id)
    assert job is not None and len(job.outputs) == 10
    on_disk = sorted(ctx.store.derived_dir.rglob("*.dcm"))
    assert on_disk == sorted(Path(o.path) for o in job.outputs)
    for output in job.outputs:
        assert pydicom.dcmread(output.path).SOPInstanceUID == output.sop_instance_uid


def test_a_failed_rerun_keeps_the_files_an_earlier_output_recorded(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same series and preset again: the same derived UIDs, so the re-run streams over
    # the recorded files of the first run; when it fails, those files stay (rows name them).
    ctx = _pipelined(tmp_path, db_url)
    sources = make_ct_series(None, n_slices=6, rows=48, cols=48)
    first = queue_series(ctx, sources, preset="ct-denoise-fast")
    assert run_job(first, ctx) is JobStatus.DONE
    done = ctx.repository.get_job(first)
    assert done is not None and len(done.outputs) == 6
    real = ctx.enhancers.get("ct-denoise-fast")
    written = threading.Event()
    writes: list[Path] = []
    original = ctx.store.write_dataset

    def write_dataset(path: Path, ds: pydicom.Dataset) -> int:
        size = original(path, ds)
        writes.append(path)
        if len(writes) == 6:
            written.set()
        return size

    monkeypatch.setattr(ctx.store, "write_dataset", write_dataset)
    monkeypatch.setattr(ctx.enhancers, "get",
                        lambda name, strength=None: FailsAfter(real, written))  # fmt: skip
    again = JobAdmin(ctx.repository.session_factory).rerun(first, "admin")  # same preset
    assert run_job(again, ctx) is JobStatus.FAILED
    failed = ctx.repository.get_job(again)
    assert failed is not None and "failed after the last slice" in (failed.error_message or "")
    recorded = sorted(Path(o.path) for o in done.outputs)
    assert sorted(writes) == recorded  # the re-run wrote over the recorded files ...
    assert sorted(ctx.store.derived_dir.rglob("*.dcm")) == recorded  # ... and kept them
