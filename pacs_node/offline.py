"""Offline enhancement of a folder of DICOM files (`pacs-node enhance`), via the worker's path."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pacs_node.dicom.classify import series_skip_reason
from pacs_node.dicom.scan import scan_series
from pacs_node.enhancers import EnhancerCache
from pacs_node.errors import InvalidSeriesError, ModelError
from pacs_node.pipeline import Progress, enhance_series
from pacs_node.settings import Settings
from pacs_node.storage import InstanceStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesOutcome:
    """What happened to one input series."""

    series_instance_uid: str
    series_number: int | None
    description: str
    instances: int
    status: str  # DONE, QA_FAILED (written, for inspection), SKIPPED or FAILED
    message: str
    output_dir: Path | None = None


def enhance_folder(
    settings: Settings,
    input_dir: Path,
    output_dir: Path,
    preset: str,
    progress_factory: Callable[[str, int], Progress] | None = None,
) -> list[SeriesOutcome]:
    """Enhance every enhanceable series under ``input_dir`` into ``output_dir``.

    Output folders are named by series number (``S<number>``), files ``IM00001.dcm``...:
    nothing in a path comes from a received string. With ``qa.enabled`` the QA gate
    measures each output: one that fails is still written (QA_FAILED, for inspection),
    unless it cannot be written at all (FAILED).
    """
    enhancers = EnhancerCache(settings)
    enhancer = enhancers.get(preset)
    found = scan_series(input_dir)
    used_numbers = {
        int(f.headers[0].SeriesNumber)
        for f in found.values()
        if f.headers[0].get("SeriesNumber") not in (None, "")
    }
    store = InstanceStore(output_dir)
    gate = enhancers.gate(preset)
    outcomes = []
    for series_uid, series in found.items():
        files = series.paths
        first = series.headers[0]
        number = int(first.SeriesNumber) if first.get("SeriesNumber") not in (None, "") else None
        description = str(first.get("SeriesDescription", "") or "")
        reason = series_skip_reason(series.headers, settings.derived.manufacturer)
        if reason is not None:
            outcomes.append(
                SeriesOutcome(series_uid, number, description, len(files), "SKIPPED", reason)
            )
            continue
        progress = (
            progress_factory(description or series_uid, len(files)) if progress_factory else None
        )
        try:
            result = enhance_series(
                files, preset, enhancer, settings.derived, used_numbers, progress, gate
            )
        except (InvalidSeriesError, ModelError) as exc:
            outcomes.append(
                SeriesOutcome(series_uid, number, description, len(files), "FAILED", str(exc))
            )
            continue
        qa = result.qa
        if not result.datasets:
            summary = qa.summary() if qa is not None else "no output"
            outcomes.append(
                SeriesOutcome(series_uid, number, description, len(files), "FAILED", summary)
            )
            continue
        derived_number = int(result.datasets[0].SeriesNumber)
        used_numbers.add(derived_number)
        folder = output_dir / f"S{derived_number}"
        for index, ds in enumerate(result.datasets, start=1):
            store.write_dataset(folder / f"IM{index:05d}.dcm", ds)
        message = f"{result.model.name} {result.model.version}, {result.seconds:.2f} s"
        if result.uncertainty:  # the uncertainty map, a secondary series in its own folder
            map_number = int(result.uncertainty[0].SeriesNumber)
            used_numbers.add(map_number)
            for index, ds in enumerate(result.uncertainty, start=1):
                store.write_dataset(output_dir / f"S{map_number}" / f"IM{index:05d}.dcm", ds)
            message += f"; uncertainty map in S{map_number}"
        elif result.uncertainty_problem:
            message += f"; {result.uncertainty_problem}"
        status = "QA_FAILED" if qa is not None and qa.verdict == "fail" else "DONE"
        if qa is not None:
            message += f"; {qa.summary()}"
        outcomes.append(
            SeriesOutcome(series_uid, number, description, len(files), status, message, folder)
        )
    return outcomes
