"""The QA gate in ``run_job``: a deliberately bad model under each failure policy, with a
real database, a real storage SCP, the real admin actions and the real command line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from models.base import ModelInfo, ProgressCallback, Spacing
from pacs_node.admin import JobAdmin
from pacs_node.db.archive import ArchiveIndex
from pacs_node.db.models import JobStatus
from pacs_node.errors import DispatchError
from pacs_node.metrics import JobCollector
from pacs_node.settings import Settings
from tests.helpers.dicom_checks import philips_slices
from tests.helpers.jobs import queue_series
from tests.helpers.synthetic import make_ct_series
from tests.integration.node import BIN, node_environment
from tests.integration.peers import CaptureSCP
from workers.context import WorkerContext
from workers.job import forward_job, run_job

Fault = Callable[[np.ndarray], np.ndarray]


class FaultyModel:
    """An enhancer with a known fault: ``fault`` maps the input volume to its output."""

    def __init__(self, fault: Fault) -> None:
        self._fault = fault

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("faulty", "0.0.1", "denoise", "CT", "a deliberately bad model", "0" * 64)

    def __call__(
        self, volume: np.ndarray, spacing_mm: Spacing, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, Spacing]:
        return self._fault(volume.astype(np.float32)), spacing_mm


def _shift(volume: np.ndarray) -> np.ndarray:
    return volume + 40.0  # every HU 40 higher: a bias no reader may be given


def _nan(volume: np.ndarray) -> np.ndarray:
    out = volume.copy()
    out[0, 5, 5] = np.nan
    return out


@pytest.fixture()
def ctx(tmp_path: Path, db_url: str) -> WorkerContext:
    return WorkerContext.from_settings(Settings(data_dir=tmp_path, database_url=db_url))


def _with_model(ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch, fault: Fault) -> None:
    """Preset ``identity`` (limits of the settings) runs ``fault`` instead."""
    monkeypatch.setattr(ctx.enhancers, "get", lambda *_args: FaultyModel(fault))


def _series() -> list[pydicom.FileDataset]:
    return make_ct_series(None, n_slices=4, rows=48, cols=48)


def test_a_real_denoiser_on_real_ct_passes_the_gate(ctx: WorkerContext, tmp_path: Path) -> None:
    sources = [pydicom.dcmread(p) for p in philips_slices(tmp_path / "study", 3)]
    job_id = queue_series(ctx, sources, preset="ct-denoise-fast")
    assert run_job(job_id, ctx) is JobStatus.DONE
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.qa is not None
    assert job.qa["verdict"] == "pass" and job.qa["action"] == "send"
    assert job.qa["slices_measured"] == 3 and job.qa["noise_sigma"] > 1.0
    assert set(job.qa["checks"]) == {
        "geometry", "non_finite", "range_excess", "mean_shift", "residual_noise_ratio",
        "edge_correlation", "sample_spread",
    }  # fmt: skip
    assert abs(job.qa["checks"]["mean_shift"]["value"]) < 2.0


def test_policy_fail_sends_nothing_and_says_why(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_model(ctx, monkeypatch, _shift)
    with CaptureSCP("PACS") as pacs:
        job_id = queue_series(ctx, _series(), preset="identity",
                              destination=f"PACS@127.0.0.1:{pacs.port}")  # fmt: skip
        assert run_job(job_id, ctx) is JobStatus.FAILED
        job = ctx.repository.get_job(job_id)
        assert job is not None and job.error_code == "qa_failed"
        assert "mean_shift 40" in (job.error_message or "")
        assert job.qa is not None and job.qa["action"] == "fail" and job.qa["policy"] == "fail"
        assert job.qa["checks"]["mean_shift"]["passed"] is False
        # An admin's retry enhances again: the outputs the gate stopped are never reused.
        JobAdmin(ctx.repository.session_factory).retry(job_id, "admin")
        assert run_job(job_id, ctx) is JobStatus.FAILED
        assert pacs.datasets == []
        # Once the model is right, the retry passes and sends.
        monkeypatch.setattr(ctx.enhancers, "get", lambda *_args: FaultyModel(lambda v: v))
        JobAdmin(ctx.repository.session_factory).retry(job_id, "admin")
        assert run_job(job_id, ctx) is JobStatus.DONE
        assert len(pacs.wait_for(4)) == 4


def test_policy_hold_waits_for_an_admin_who_releases_or_rejects(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch, db_url: str, tmp_path: Path
) -> None:
    _with_model(ctx, monkeypatch, _shift)
    env = node_environment(tmp_path, database_url=db_url)
    with CaptureSCP("PACS") as pacs:
        held, rejected = (
            queue_series(ctx, _series(), preset="identity", qa_failure="hold",
                         destination=f"PACS@127.0.0.1:{pacs.port}")
            for _ in range(2)
        )  # fmt: skip
        for job_id in (held, rejected):
            assert run_job(job_id, ctx) is JobStatus.HELD
        job = ctx.repository.get_job(held)
        assert job is not None and job.qa is not None and job.qa["action"] == "hold"
        assert len(job.outputs) == 4 and all(Path(o.path).is_file() for o in job.outputs)
        assert job.events[-1].message.startswith("held: nothing is sent")
        shown = subprocess.run([str(BIN / "pacs-node"), "jobs", "show", str(held), "--json"],
                               env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert json.loads(shown.stdout)["qa"]["verdict"] == "fail"
        assert "QA checks" in subprocess.run(
            [str(BIN / "pacs-node"), "jobs", "show", str(held)], env=env, capture_output=True,
            text=True, timeout=120,
        ).stdout  # fmt: skip
        assert pacs.datasets == []  # nothing left while held
        released = subprocess.run([str(BIN / "pacs-node"), "jobs", "release", str(held),
                                   "--json"], env=env, capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
        assert released.returncode == 0, released.stderr
        assert run_job(held, ctx) is JobStatus.DONE  # the held output, as it was
        received = pacs.wait_for(4)
        assert {ds.SOPInstanceUID for ds in received} == {o.sop_instance_uid for o in job.outputs}
        done = ctx.repository.get_job(held)
        assert done is not None and done.qa is not None
        assert done.qa["released_by"].startswith("cli:")
        JobAdmin(ctx.repository.session_factory).reject(rejected, "admin")
        gone = ctx.repository.get_job(rejected)
        assert gone is not None and gone.status is JobStatus.FAILED
        assert gone.error_code == "qa_rejected"
        assert len(pacs.datasets) == 4  # the rejected output never left
        registry = CollectorRegistry()
        registry.register(JobCollector(ctx.repository.session_factory))
        text = generate_latest(registry).decode()
        assert 'pacs_node_qa_jobs{preset="identity",verdict="fail"} 2.0' in text
        assert 'pacs_node_qa_check_failures{check="mean_shift"} 2.0' in text
        assert 'pacs_node_jobs{state="HELD"} 0.0' in text


def test_policy_send_original_forwards_the_source_untouched(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_model(ctx, monkeypatch, _shift)
    sources = _series()
    with CaptureSCP("PACS") as pacs:
        job_id = queue_series(ctx, sources, preset="identity", qa_failure="send_original",
                              destination=f"PACS@127.0.0.1:{pacs.port}")  # fmt: skip
        assert run_job(job_id, ctx) is JobStatus.SKIPPED
        assert job_id in ctx.repository.undispatched_forwards()  # the node publishes it
        assert forward_job(job_id, ctx) is True
        received = pacs.wait_for(4)
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.SKIPPED and job.error_code == "qa_failed"
    assert job.qa is not None and job.qa["action"] == "send_original"
    assert {ds.SOPInstanceUID for ds in received} == {ds.SOPInstanceUID for ds in sources}
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    for ds in received:  # the originals, pixel for pixel
        np.testing.assert_array_equal(ds.pixel_array, by_uid[ds.SOPInstanceUID].pixel_array)


def test_an_output_that_cannot_be_written_cannot_be_held(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_model(ctx, monkeypatch, _nan)
    job_id = queue_series(ctx, _series(), preset="identity", qa_failure="hold")
    assert run_job(job_id, ctx) is JobStatus.FAILED
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.error_code == "qa_failed" and job.outputs == []
    assert "non_finite 1" in (job.error_message or "")
    assert "cannot be held" in (job.error_message or "")
    _with_model(ctx, monkeypatch, lambda v: v[:, :24, :])  # a wrong grid
    other = queue_series(ctx, make_ct_series(None, n_slices=2, rows=48, cols=48, seed=5),
                         preset="identity")  # fmt: skip
    assert run_job(other, ctx) is JobStatus.FAILED
    failed = ctx.repository.get_job(other)
    assert failed is not None and failed.qa is not None
    assert "expected (2, 48, 48)" in failed.qa["checks"]["geometry"]["detail"]


def test_the_gate_can_be_turned_off(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = WorkerContext.from_settings(
        Settings(data_dir=tmp_path, database_url=db_url, qa={"enabled": False})  # type: ignore[arg-type]
    )
    _with_model(ctx, monkeypatch, _shift)
    job_id = queue_series(ctx, _series(), preset="identity")
    assert run_job(job_id, ctx) is JobStatus.DONE
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.qa is None


def test_outputs_never_measured_are_not_reused(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stored outputs but died before the gate recorded its report: the next
    attempt enhances and measures again instead of sending what was never measured."""
    with CaptureSCP("PACS", store_status=0xA700) as pacs:
        job_id = queue_series(ctx, _series(), preset="identity",
                              destination=f"PACS@127.0.0.1:{pacs.port}")  # fmt: skip
        with pytest.raises(DispatchError):  # measured, passed, refused by the PACS
            run_job(job_id, ctx)
        job = ctx.repository.get_job(job_id)
        assert job is not None and job.qa is not None and job.qa["action"] == "send"
        # The crash: outputs (re)written, no report yet.
        assert job.output_series_instance_uid is not None
        ctx.repository.replace_outputs(job_id, job.output_series_instance_uid,
                                       [(o.sop_instance_uid, o.source_sop_instance_uid, o.path)
                                        for o in job.outputs])  # fmt: skip
        cleared = ctx.repository.get_job(job_id)
        assert cleared is not None and cleared.qa is None
        JobAdmin(ctx.repository.session_factory).retry(job_id, "admin", force=True)
        _with_model(ctx, monkeypatch, _shift)
        assert run_job(job_id, ctx) is JobStatus.FAILED  # measured again, and stopped
    failed = ctx.repository.get_job(job_id)
    assert failed is not None and failed.error_code == "qa_failed"


def test_a_released_job_whose_fresh_output_is_unusable_fails(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_model(ctx, monkeypatch, _shift)
    with CaptureSCP("PACS") as pacs:
        job_id = queue_series(ctx, _series(), preset="identity", qa_failure="hold",
                              destination=f"PACS@127.0.0.1:{pacs.port}")  # fmt: skip
        assert run_job(job_id, ctx) is JobStatus.HELD
        JobAdmin(ctx.repository.session_factory).release(job_id, "admin")
        held = ctx.repository.get_job(job_id)
        assert held is not None
        for output in held.outputs:  # another host's worker takes it: no local copies
            Path(output.path).unlink()
        _with_model(ctx, monkeypatch, _nan)
        assert run_job(job_id, ctx) is JobStatus.FAILED
        assert pacs.datasets == []
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.error_code == "qa_failed"
    assert "non_finite" in (job.error_message or "")


def test_dicomweb_does_not_serve_outputs_the_gate_stopped(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = ArchiveIndex(ctx.repository.session_factory)
    passed = queue_series(ctx, _series(), preset="identity")
    assert run_job(passed, ctx) is JobStatus.DONE
    _with_model(ctx, monkeypatch, _shift)
    stopped = [queue_series(ctx, make_ct_series(None, n_slices=2, rows=48, cols=48, seed=s),
                            preset="identity", qa_failure=policy)
               for s, policy in ((11, "fail"), (12, "hold"), (13, "send_original"))]  # fmt: skip
    assert [run_job(j, ctx) for j in stopped] == [JobStatus.FAILED, JobStatus.HELD,
                                                   JobStatus.SKIPPED]  # fmt: skip
    served = {i.series_instance_uid for i in archive.instances()}
    for job_id in [passed, *stopped]:
        job = ctx.repository.get_job(job_id)
        assert job is not None and job.output_series_instance_uid is not None
        assert (job.output_series_instance_uid in served) is (job_id == passed)


class UnsureModel(FaultyModel):
    """A stochastic model whose samples disagree by tens of HU."""

    @property
    def stochastic(self) -> bool:
        return True

    @property
    def reduced_steps(self) -> bool:
        return False

    def resample(
        self, volume: np.ndarray, spacing_mm: Spacing, draw: int, index: int
    ) -> np.ndarray:
        rng = np.random.default_rng(draw)
        return volume[index] + rng.normal(0.0, 40.0, volume.shape[1:]).astype(np.float32)


def test_a_diffusion_model_whose_samples_disagree_fails(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ctx.enhancers, "get", lambda *_args: UnsureModel(lambda v: v))
    job_id = queue_series(ctx, _series(), preset="identity")
    assert run_job(job_id, ctx) is JobStatus.FAILED
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.qa is not None
    assert job.qa["checks"]["sample_spread"]["passed"] is False
    assert job.qa["checks"]["sample_spread"]["value"] > 50.0


def test_the_shipped_diffusion_preset_has_its_spread_measured(
    ctx: WorkerContext, tmp_path: Path
) -> None:
    # Real CT: on a tiny synthetic series the blind networks shift uniform regions by
    # 8-15 HU (the CNN presets as well), which real slices do not show.
    sources = [pydicom.dcmread(p) for p in philips_slices(tmp_path / "study", 3)]
    job_id = queue_series(ctx, sources, preset="ct-diffusion")
    assert run_job(job_id, ctx) is JobStatus.DONE
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.qa is not None
    spread = job.qa["checks"]["sample_spread"]
    assert spread["passed"] and spread["value"] is not None and 0.0 < spread["value"] < 10.0
