"""The viewer's slice API: counts, windowed PNGs, difference, quality estimate."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import Engine

from pacs_node.admin import TokenStore
from pacs_node.api.app import create_app
from pacs_node.api.viewer import noise_sigma_estimate
from pacs_node.db.repository import JobRepository, Route
from tests.helpers.synthetic import file_path, make_ct_series
from tests.pacs_node.db.test_repository import _instance


def test_slices_windows_difference_and_quality(
    repository: JobRepository, engine: Engine, tmp_path: Path
) -> None:
    source = make_ct_series(tmp_path / "in", n_slices=3, rows=64, cols=64, noise_hu=30.0)
    derived = make_ct_series(tmp_path / "out", n_slices=3, rows=64, cols=64, noise_hu=5.0, seed=1)
    job_id = None
    for ds in source:
        received = replace(_instance(str(ds.SOPInstanceUID)), path=str(file_path(ds)))
        job_id = repository.record_instance(received, route=Route("ct-denoise")).job_id
    assert job_id is not None
    repository.replace_outputs(job_id, "9.9", [
        (str(d.SOPInstanceUID), str(s.SOPInstanceUID), str(file_path(d)))
        for d, s in zip(derived, source, strict=True)
    ])  # fmt: skip
    token = TokenStore(repository.session_factory).create("v", "viewer")
    client = TestClient(create_app(repository, engine))
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/api/jobs/{job_id}/slices").status_code == 401
    info = client.get(f"/api/jobs/{job_id}/slices", headers=headers).json()
    assert (info["slices"], info["derived"], info["difference"]) == (3, True, True)
    assert info["windows"]["lung"] == {"center": -600.0, "width": 1500.0}
    quality = info["quality"]
    assert 20 < quality["noise_sigma_source"] < 40 and quality["noise_sigma_enhanced"] < 10
    assert quality["noise_reduction_percent"] > 60
    for kind in ("source", "derived", "difference"):
        response = client.get(f"/api/jobs/{job_id}/slices/{kind}/1.png?window=bone",
                              headers=headers)  # fmt: skip
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == (64, 64)
    soft = client.get(f"/api/jobs/{job_id}/slices/source/1.png", headers=headers).content
    lung = client.get(f"/api/jobs/{job_id}/slices/source/1.png?window=lung", headers=headers)
    assert soft != lung.content
    assert client.get(f"/api/jobs/{job_id}/slices/source/3.png", headers=headers).status_code == 404
    bad = client.get(f"/api/jobs/{job_id}/slices/source/0.png?window=x", headers=headers)
    assert bad.status_code == 422
    assert client.get("/api/jobs/999/slices", headers=headers).status_code == 404


def test_noise_estimate_recovers_white_noise_sigma() -> None:
    rng = np.random.default_rng(0)
    image = 40.0 + rng.normal(0, 12.0, (128, 128))
    estimate = noise_sigma_estimate(image, np.ones_like(image, dtype=bool))
    assert estimate is not None and abs(estimate - 12.0) < 0.8
