"""The uncertainty map of the diffusion preset: a secondary series sent with the enhanced
one, computed from the real sampler, with a real database and a real storage SCP."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from models.base import StochasticEnhancer
from models.engine import NetworkEnhancer
from pacs_node.admin import TokenStore
from pacs_node.api.app import create_app
from pacs_node.api.viewer import JobVolumes, SliceService
from pacs_node.db.archive import ArchiveIndex
from pacs_node.db.models import JobStatus
from pacs_node.dicom.uncertainty import UNCERTAINTY_CODE
from pacs_node.dicom.volume import load_series
from pacs_node.enhancers import EnhancerCache
from pacs_node.pipeline import enhance_series
from pacs_node.qa import _regions
from pacs_node.settings import Settings
from tests.helpers.dicom_checks import philips_slices
from tests.helpers.jobs import queue_series
from tests.helpers.synthetic import make_ct_series
from tests.integration.node import BIN, node_environment
from tests.integration.peers import CaptureSCP
from tests.models.test_registry import _save_diffusion
from workers.context import WorkerContext
from workers.job import run_job

SAMPLES = 2


@pytest.fixture()
def ctx(tmp_path: Path, db_url: str) -> WorkerContext:
    settings = Settings(data_dir=tmp_path, database_url=db_url,
                        derived={"uncertainty_samples": SAMPLES})  # type: ignore[arg-type]  # fmt: skip
    return WorkerContext.from_settings(settings)


def _real_crops(tmp_path: Path) -> list[pydicom.FileDataset]:
    """Three real Philips CT slices, cropped to their central 128 x 128 pixels."""
    crops = []
    for path in philips_slices(tmp_path / "study", 3):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array[192:320, 192:320].copy()
        spacing = [float(v) for v in ds.PixelSpacing]
        position = [float(v) for v in ds.ImagePositionPatient]
        # Image Orientation is axial here: move the origin to the crop's first pixel.
        ds.ImagePositionPatient = [position[0] + 192 * spacing[1],
                                   position[1] + 192 * spacing[0], position[2]]  # fmt: skip
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        crops.append(ds)
    return crops


def test_the_diffusion_preset_sends_its_uncertainty_map_beside_the_enhanced_series(
    ctx: WorkerContext, tmp_path: Path, db_url: str
) -> None:
    # Real CT (on a tiny synthetic series the blind networks shift uniform regions past
    # the gate's limit); a 128 x 128 crop keeps the sampler runs short.
    sources = _real_crops(tmp_path)
    with CaptureSCP("PACS") as pacs:
        job_id = queue_series(ctx, sources, preset="ct-diffusion",
                              destination=f"PACS@127.0.0.1:{pacs.port}")  # fmt: skip
        assert run_job(job_id, ctx) is JobStatus.DONE
        received = pacs.wait_for(6, timeout_s=20)
    job = ctx.repository.get_job(job_id)
    assert job is not None and job.output_series_instance_uid is not None
    enhanced = [ds for ds in received if ds.SeriesInstanceUID == job.output_series_instance_uid]
    maps = [ds for ds in received if ds.SeriesInstanceUID != job.output_series_instance_uid]
    assert len(enhanced) == 3 and len(maps) == 3
    assert len({ds.SeriesInstanceUID for ds in maps}) == 1
    first = maps[0]
    # Labelled as a map of the enhanced series, in the same study, on the same grid.
    assert first.StudyInstanceUID == sources[0].StudyInstanceUID
    assert "uncertainty" in first.SeriesDescription
    assert first.SeriesNumber not in (enhanced[0].SeriesNumber, sources[0].SeriesNumber)
    code = first.DerivationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == UNCERTAINTY_CODE[:2]
    assert job.output_series_instance_uid in first.DerivationDescription
    assert "not an image of the patient" in first.DerivationDescription
    assert list(first.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert (first.Rows, first.Columns) == (enhanced[0].Rows, enhanced[0].Columns) == (128, 128)
    assert float(first.RescaleSlope) == pytest.approx(0.1)
    # Its values: the spread of the sampler's output and SAMPLES more draws, recomputed.
    enhancer = ctx.enhancers.get("ct-diffusion")
    assert isinstance(enhancer, StochasticEnhancer) and enhancer.stochastic
    # The shipped preset samples 1 of the sampler's steps: its output is not one of the
    # full sampler's samples, so the map is the spread of the sampler's own draws 0..K.
    assert isinstance(enhancer, NetworkEnhancer) and enhancer.reduced_steps
    volume = load_series([Path(i.path) for i in ctx.repository.job_inputs(job_id)])
    by_source = {str(ds.SOPInstanceUID): k for k, ds in enumerate(volume.datasets)}
    # Each draw is one run of the full sampler over the whole volume, as the node draws.
    sampled = [enhancer.resample(volume.values, volume.spacing_mm, draw, None)
               for draw in range(SAMPLES + 1)]  # fmt: skip
    for ds in maps:
        index = by_source[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        draws = [volume_draw[index] for volume_draw in sampled]
        expected = np.std(np.stack(draws), axis=0, ddof=1)
        stored = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(stored, expected, atol=0.051)
    assert float(np.max([ds.pixel_array.max() for ds in maps])) > 0  # the samples differ
    # The QA gate judged the map's centre slice (99th percentile over the body).
    assert job.qa is not None
    centre = next(m for m in maps if m.SourceImageSequence[0].ReferencedSOPInstanceUID
                  == str(volume.datasets[1].SOPInstanceUID))  # fmt: skip
    centre_map = centre.pixel_array * float(centre.RescaleSlope)
    body = _regions(volume.values[1], True)[1]
    assert job.qa["checks"]["sample_spread"]["value"] == pytest.approx(
        float(np.percentile(centre_map[body], 99.0)), abs=0.06
    )
    # The job row records every instance with its series.
    by_series = {o.series_instance_uid for o in job.outputs}
    assert by_series == {job.output_series_instance_uid, first.SeriesInstanceUID}
    assert all(o.send_status == 0 for o in job.outputs)
    # DICOMweb serves both series; the viewer compares the enhanced one only.
    archive = ArchiveIndex(ctx.repository.session_factory)
    served = {i.series_instance_uid for i in archive.instances(study=str(first.StudyInstanceUID))}
    assert {job.output_series_instance_uid, str(first.SeriesInstanceUID)} <= served
    assert len(archive.instances(series=str(first.SeriesInstanceUID))) == 3
    volumes: JobVolumes = SliceService(ctx.repository).volumes(job_id)
    assert volumes.derived is not None and volumes.derived.shape == (3, 128, 128)
    # The dashboard's job page names the map apart from the derived series.
    client = TestClient(create_app(ctx.repository, ctx.repository.session_factory.kw["bind"]))
    client.cookies.set("pacs_node_token", TokenStore(ctx.repository.session_factory)
                       .create("alice", "admin"))  # fmt: skip
    page = client.get(f"/ui/jobs/{job_id}").text
    assert f'id="uncertainty-map">{first.SeriesInstanceUID} (3 instances' in page
    # The command line names both series.
    shown = subprocess.run([str(BIN / "pacs-node"), "jobs", "show", str(job_id)],
                           env=node_environment(tmp_path, database_url=db_url),
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any("Uncertainty map" in line and str(first.SeriesInstanceUID) in line
               for line in lines), shown.stdout  # fmt: skip
    assert "3 derived instances and 3 of the uncertainty map" in shown.stdout


def test_a_deterministic_preset_sends_no_map(ctx: WorkerContext) -> None:
    sources = make_ct_series(None, n_slices=2, rows=32, cols=32, seed=6)
    job_id = queue_series(ctx, sources, preset="ct-denoise-fast")
    assert run_job(job_id, ctx) is JobStatus.DONE
    job = ctx.repository.get_job(job_id)
    assert job is not None and len(job.outputs) == 2
    assert {o.series_instance_uid for o in job.outputs} == {job.output_series_instance_uid}


def test_a_preset_sampling_fewer_steps_maps_the_full_samplers_spread(tmp_path: Path) -> None:
    """The output of 1 step is not one of the 4-step sampler's samples: the map is the
    spread of the sampler's own draws (seeds +0, +1, +2), not the gap between the two."""
    weights = tmp_path / "weights"
    _save_diffusion(weights, "diff")
    presets = tmp_path / "presets.yaml"
    presets.write_text("diff-1:\n  description: d\n  modality: CT\n  model: diff\n"
                       "  parameters: {steps: 1}\n")  # fmt: skip
    settings = Settings(data_dir=tmp_path, models={"presets_file": presets, "weights_dir": weights},
                        derived={"uncertainty_samples": SAMPLES})  # type: ignore[arg-type]  # fmt: skip
    enhancers = EnhancerCache(settings)
    enhancer = enhancers.get("diff-1")
    assert isinstance(enhancer, NetworkEnhancer) and enhancer.reduced_steps
    paths = []
    for ds in make_ct_series(None, n_slices=3, rows=32, cols=32, seed=8):
        path = tmp_path / "in" / f"{ds.SOPInstanceUID}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    result = enhance_series(paths, "diff-1", enhancer, settings.derived, set(),
                            gate=enhancers.gate("diff-1"))  # fmt: skip
    assert (
        len(result.uncertainty) == 3 and "3 samples" in result.uncertainty[0].DerivationDescription
    )
    volume = load_series(paths)
    sampler = [enhancer.resample(volume.values, volume.spacing_mm, d, None)[1] for d in range(3)]
    expected = np.std(np.stack(sampler), axis=0, ddof=1)
    centre = next(ds for ds in result.uncertainty if ds.SourceImageSequence[0]
                  .ReferencedSOPInstanceUID == str(volume.datasets[1].SOPInstanceUID))  # fmt: skip
    stored = centre.pixel_array * float(centre.RescaleSlope)
    np.testing.assert_allclose(stored, expected, atol=0.051)
    output, _ = enhancer(volume.values, volume.spacing_mm)
    gap = np.std(np.stack([output[1], *sampler[1:]]), axis=0, ddof=1)
    assert np.abs(gap - expected).max() > 1.0  # what the map would have been otherwise
    # The enhanced series' UIDs depend on the steps, the map's on its sample count.
    assert "steps=1/4" in enhancer.info.variant
    three = settings.derived.model_copy(update={"uncertainty_samples": 3})
    more = enhance_series(paths, "diff-1", enhancer, three, set())
    assert more.series_instance_uid == result.series_instance_uid
    assert more.uncertainty[0].SeriesInstanceUID != result.uncertainty[0].SeriesInstanceUID
