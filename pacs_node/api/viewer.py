"""Slices of a job's source and derived series as windowed PNGs, for the before/after viewer."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Response
from PIL import Image

from pacs_node.db.repository import JobRepository
from pacs_node.dicom.volume import load_series
from pacs_node.errors import InvalidSeriesError

Kind = Literal["source", "derived", "difference"]
# Window presets (centre, width) in HU, as reading stations name them.
WINDOWS: dict[str, tuple[float, float]] = {
    "soft": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
DIFFERENCE_WIDTH_HU = 100.0  # difference view: black -50 HU, grey 0, white +50 HU


@dataclass(frozen=True)
class JobVolumes:
    """A job's source and derived volumes in modality units, sorted along the normal."""

    source: np.ndarray
    derived: np.ndarray | None

    @property
    def same_grid(self) -> bool:
        """Whether a difference image is defined (same shape, e.g. not super-resolution)."""
        return self.derived is not None and self.derived.shape == self.source.shape


class SliceService:
    """Loads a job's volumes once (a few jobs kept) and renders slices."""

    def __init__(self, repository: JobRepository, keep: int = 3) -> None:
        self._repository = repository
        self._keep = keep
        self._cache: OrderedDict[int, JobVolumes] = OrderedDict()
        self._lock = threading.Lock()

    def volumes(self, job_id: int) -> JobVolumes:
        """The job's volumes; 404 for an unknown job, 410 when its files are gone."""
        with self._lock:
            if job_id in self._cache:
                self._cache.move_to_end(job_id)
                return self._cache[job_id]
        job = self._repository.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        inputs = [Path(i.path) for i in self._repository.job_inputs(job_id)]
        # The derived series only: a secondary series (the uncertainty map) is not an
        # image of the patient to compare.
        secondary = {o.sop_instance_uid for o in job.secondary_outputs}
        outputs = [Path(o.path) for o in job.outputs if o.sop_instance_uid not in secondary]
        try:
            source = load_series(inputs).values
            derived = load_series(outputs).values if outputs else None
        except (InvalidSeriesError, OSError) as exc:
            raise HTTPException(410, f"the job's images cannot be read: {exc}") from exc
        volumes = JobVolumes(source, derived)
        with self._lock:
            self._cache[job_id] = volumes
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return volumes


def noise_sigma_estimate(image: np.ndarray, mask: np.ndarray) -> float | None:
    """Noise σ of a slice from horizontal neighbour differences inside ``mask``: robust
    (MAD × 1.4826) and divided by √2 (a difference of two pixels has twice the variance).
    An estimate: structure edges inflate it slightly."""
    diff = np.diff(image.astype(np.float64), axis=1)[mask[:, 1:] & mask[:, :-1]]
    if diff.size < 100:
        return None
    mad = float(np.median(np.abs(diff - np.median(diff))))
    return 1.4826 * mad / np.sqrt(2.0)


def job_quality(volumes: JobVolumes) -> dict[str, float | None]:
    """Quality figures of a finished job on its centre slice (same grid only)."""
    if not volumes.same_grid or volumes.derived is None:
        return {}
    centre = volumes.source.shape[0] // 2
    source, derived = volumes.source[centre], volumes.derived[centre]
    body = source > -500  # tissue, not air
    before, after = noise_sigma_estimate(source, body), noise_sigma_estimate(derived, body)
    change = float(np.mean(np.abs(derived - source)[body])) if body.any() else None
    reduction = 100.0 * (1 - after / before) if before and after is not None else None
    return {"noise_sigma_source": before, "noise_sigma_enhanced": after,
            "noise_reduction_percent": reduction, "mean_abs_change": change}  # fmt: skip


def _png(image: np.ndarray, centre: float, width: float) -> bytes:
    low = centre - width / 2
    scaled = np.clip((image.astype(np.float32) - low) / width, 0.0, 1.0)
    buffer = io.BytesIO()
    Image.fromarray((scaled * 255).round().astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def create_viewer_router(
    repository: JobRepository, service: SliceService, viewer: Any
) -> APIRouter:
    """``/api/jobs/{id}/slices``: what the viewer can show, and each slice as a PNG."""
    router = APIRouter(prefix="/api/jobs/{job_id}/slices", tags=["viewer"])

    @router.get("")
    def describe(job_id: int, who: Any = viewer) -> dict[str, Any]:
        """Slice counts, whether a difference view exists, and the window presets."""
        volumes = service.volumes(job_id)
        return {
            "slices": int(volumes.source.shape[0]),
            "derived": volumes.derived is not None,
            "difference": volumes.same_grid,
            "windows": {k: {"center": c, "width": w} for k, (c, w) in WINDOWS.items()},
            "quality": job_quality(volumes),
        }

    @router.get("/{kind}/{index}.png", response_class=Response)
    def slice_png(
        job_id: int,
        kind: Kind,
        index: int,
        window: str = Query(default="soft", pattern="^(soft|lung|bone|brain)$"),
        who: Any = viewer,
    ) -> Response:
        """Slice ``index`` (0 = first along the slice normal) in a window preset."""
        volumes = service.volumes(job_id)
        if not 0 <= index < volumes.source.shape[0]:
            raise HTTPException(404, f"slice {index} outside 0-{volumes.source.shape[0] - 1}")
        centre, width = WINDOWS[window]
        if kind == "source":
            data = _png(volumes.source[index], centre, width)
        elif volumes.derived is None:
            raise HTTPException(404, "the job has no derived series (yet)")
        elif kind == "derived":
            data = _png(volumes.derived[index], centre, width)
        elif not volumes.same_grid:
            raise HTTPException(409, "no difference view: the derived series has another grid")
        else:
            assert volumes.derived is not None
            data = _png(volumes.derived[index] - volumes.source[index], 0.0, DIFFERENCE_WIDTH_HU)
        return Response(
            data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"}
        )

    return router
