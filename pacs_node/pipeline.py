"""One series through one preset: the code path shared by the worker and `pacs-node enhance`."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset

from models.base import Enhancer, ModelInfo, StochasticEnhancer, StreamingEnhancer
from pacs_node import __version__
from pacs_node.dicom.derived import (
    DerivationInfo,
    DerivedSeriesBuilder,
    build_derived_series,
    choose_series_number,
    derivation_code_for_task,
)
from pacs_node.dicom.derived_multiframe import build_derived_multiframe
from pacs_node.dicom.multiframe import is_multiframe_enhanceable, load_frames
from pacs_node.dicom.uncertainty import build_uncertainty_series
from pacs_node.dicom.volume import load_series
from pacs_node.errors import InvalidSeriesError, ModelError
from pacs_node.qa import Gate, QAReport, geometry_problems, measure, unusable_report
from pacs_node.settings import DerivedSettings

Progress = Callable[[int, int], None]
# Takes each derived instance as it is built (the worker writes it to the store).
InstanceSink = Callable[[FileDataset], None]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnhancedSeries:
    """The derived series of one source series and how it was made."""

    datasets: list[FileDataset]
    sources: list[str]
    model: ModelInfo
    seconds: float
    # The QA gate's figures (None when no gate was given); no datasets when the output
    # could not be written (wrong grid, NaN or Inf).
    qa: QAReport | None = None
    # The uncertainty map's instances (a secondary series; derived.uncertainty_samples of
    # a stochastic preset), else none; why a wanted map is missing.
    uncertainty: list[FileDataset] = field(default_factory=list)
    uncertainty_problem: str = ""

    @property
    def series_instance_uid(self) -> str:
        """The derived series' UID."""
        return str(self.datasets[0].SeriesInstanceUID)


def derivation_info(
    preset: str, model: ModelInfo, derived: DerivedSettings, series_number: int
) -> DerivationInfo:
    """The provenance written into every derived instance."""
    return DerivationInfo(
        preset=preset,
        model_name=model.name,
        model_version=model.version,
        weights_sha256=model.weights_sha256,
        description=(
            f"Enhanced by {derived.manufacturer} {__version__}, preset {preset}: "
            f"{model.description}; model {model.name} {model.version}, "
            f"sha256 {model.weights_sha256[:16]}"
            + (f"; strength {model.strength:.0%}" if model.strength < 1.0 else "")
        )[:1024],
        derivation_code=derivation_code_for_task(model.task),
        series_description_template=derived.series_description_template,
        series_number=series_number,
        manufacturer=derived.manufacturer,
        equipment_model_name=derived.equipment_model_name,
        software_versions=__version__,
        strength=model.strength,
        variant=model.variant,
    )


def _run(
    enhancer: Enhancer,
    values: np.ndarray,
    spacing: tuple[float, float, float],
    progress: Progress | None,
    streamer: _Streamer | None = None,
) -> tuple[np.ndarray, tuple[float, float, float], float]:
    """The model over a volume: its values, spacing and the seconds it took; a failure
    of the model is a ModelError naming it. With ``streamer``, finished slices go to it
    while the model computes the rest."""
    started = time.perf_counter()
    try:
        if streamer is not None and isinstance(enhancer, StreamingEnhancer):
            out, out_spacing = enhancer.enhance_streaming(values, spacing, streamer.ready,
                                                          progress)  # fmt: skip
        else:
            out, out_spacing = enhancer(values, spacing, progress)
    except (RuntimeError, ValueError, MemoryError) as exc:
        raise ModelError(f"model {enhancer.info.name} failed: {exc}") from exc
    return out, out_spacing, time.perf_counter() - started


class _Streamer:
    """The pipelined part of a job: derived instances built and handed to a sink (the
    worker writes them) on a thread of its own, slice by slice as the model finishes
    them, while it computes the rest. Nothing here is sent: the QA gate still sees the
    whole output first. A failure stops the streaming; the whole series is then built
    again after the model, as without streaming (:attr:`error`)."""

    def __init__(self, builder: DerivedSeriesBuilder, sink: InstanceSink) -> None:
        self._builder = builder
        self._sink = sink
        self._queue: queue.Queue[tuple[int, np.ndarray] | None] = queue.Queue()
        self._cancelled = False
        self.built: dict[int, FileDataset] = {}
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._work, name="derived-builder", daemon=True)
        self._thread.start()

    def ready(self, first: int, values: np.ndarray) -> None:
        """The engine's callback: slices ``first``, ``first + 1``, ... are final."""
        self._queue.put((first, values))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            first, values = item
            try:
                for offset, frame in enumerate(values):
                    if self.error is not None or self._cancelled:
                        break
                    index = first + offset
                    self._builder.check_slice(index, frame)
                    dataset = self._builder.build(index, frame)
                    self._sink(dataset)
                    self.built[index] = dataset
            except Exception as exc:  # noqa: BLE001 - the series is built again after the run
                logger.warning("building the derived instances while the model runs stopped: "
                               "%s; they are built after it", exc)  # fmt: skip
                self.error = exc

    def finish(self, cancel: bool = False) -> None:
        """Wait until every slice handed over is built (``cancel``: stop at the next one).

        The thread has ended when this returns or raises: an exception raised meanwhile
        in this thread (a job's soft time limit) cancels the rest, waits for the thread,
        and is raised then.
        """
        if cancel:
            self._cancelled = True
        self._queue.put(None)
        interrupted: BaseException | None = None
        while self._thread.is_alive():
            try:
                self._thread.join()
            except BaseException as exc:  # noqa: BLE001 - raised below, once the thread ended
                self._cancelled = True
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted

    def complete(self, count: int) -> list[FileDataset] | None:
        """All ``count`` instances, in order, if every one was built, else None."""
        if self.error is not None or len(self.built) != count:
            return None
        return [self.built[index] for index in range(count)]


@dataclass(frozen=True)
class _Run:
    """What the gate measures: the model's input and output, and how it was run."""

    enhancer: Enhancer
    source: np.ndarray
    values: np.ndarray
    spacing: tuple[float, float, float]
    modality: str


def _spread(run: _Run, samples: int) -> tuple[Callable[[], np.ndarray] | None, str]:
    """For a stochastic model: the per-pixel spread (σ) of the centre slice across its
    output and ``samples`` more draws (computed once, when asked), else None and why."""
    enhancer = run.enhancer
    if not isinstance(enhancer, StochasticEnhancer) or not enhancer.stochastic:
        return None, "a deterministic model"
    if samples < 1:
        return None, "not measured: qa.diffusion_samples is 0"

    @cache
    def spread() -> np.ndarray:
        try:
            return _draws_spread(run, run.source.shape[0] // 2, samples)
        except (RuntimeError, ValueError, MemoryError) as exc:
            raise ModelError(f"model {enhancer.info.name} failed drawing samples: {exc}") from exc

    return spread, ""


def _draws_spread(run: _Run, index: int | None, samples: int) -> np.ndarray:
    """Per-pixel σ of slice ``index`` (None: every slice) across ``samples`` + 1 samples of
    the full sampler: the output and ``samples`` more draws (seeds + 1, + 2, ...). An output
    sampled in fewer steps than the sampler's levels is not one of its samples: the full
    sampler's own draw (seed + 0) takes its place, so the spread is the sampler's, not the
    gap between the two step counts. Accumulated draw by draw (Welford), one volume each."""
    enhancer = run.enhancer
    assert isinstance(enhancer, StochasticEnhancer)
    own = run.values if index is None else run.values[index]
    first = enhancer.resample(run.source, run.spacing, 0, index) if enhancer.reduced_steps else own
    mean = np.array(first, dtype=np.float64)
    squares = np.zeros_like(mean)
    for draw in range(1, samples + 1):
        value = np.asarray(enhancer.resample(run.source, run.spacing, draw, index), np.float64)
        delta = value - mean
        mean += delta / (draw + 1)
        squares += delta * (value - mean)
    return np.sqrt(squares / samples)


def _uncertainty_map(run: _Run, samples: int) -> tuple[np.ndarray | None, str]:
    """For a stochastic model and ``samples`` ≥ 1: per pixel of every slice, the spread
    (σ) across ``samples`` + 1 samples of the full sampler (:func:`_draws_spread`, each
    draw one run over the whole volume), else None. Best effort: a failure to draw leaves
    no map, and the reason, for the enhanced series is sent all the same."""
    enhancer = run.enhancer
    if samples < 1 or not isinstance(enhancer, StochasticEnhancer) or not enhancer.stochastic:
        return None, ""
    try:
        return _draws_spread(run, None, samples).astype(np.float32), ""
    except (RuntimeError, ValueError, MemoryError) as exc:
        logger.warning("model %s failed drawing samples for the uncertainty map: %s",
                       enhancer.info.name, exc)  # fmt: skip
        return None, f"no uncertainty map: drawing samples failed: {exc}"


def _gated(
    gate: Gate | None, run: _Run, problems: list[str], spread_map: np.ndarray | None = None
) -> QAReport | None:
    """The gate's report on the run's output; without a gate, a broken model contract
    (wrong grid, ``problems``) is a ModelError as before. With an uncertainty map, the
    spread check reads its centre slice."""
    if gate is None:
        if problems:
            raise ModelError(f"model {run.enhancer.info.name} returned {problems[0]}")
        return None
    spread, why_not = _spread(run, gate.diffusion_samples)
    if spread_map is not None and spread is not None:  # the map holds what the gate would draw
        centre = spread_map[spread_map.shape[0] // 2]
        spread = lambda: centre  # noqa: E731
    return measure(run.source, run.values, modality=run.modality,
                   scale=run.enhancer.info.scale_factor, limits=gate.limits,
                   max_slices=gate.max_slices, geometry_problems=problems,
                   sample_spread=spread, sample_spread_detail=why_not)  # fmt: skip


def _with_geometry(report: QAReport | None, problems: list[str]) -> QAReport | None:
    """The report on instances built with the wrong geometry: unusable, as a wrong grid
    (nothing measured again)."""
    if report is None or not problems:
        return report
    return unusable_report(problems, 0, report.unit)


def _series_number(source: Dataset, used: Collection[int], derived: DerivedSettings) -> int:
    number = source.get("SeriesNumber")
    return choose_series_number(
        int(number) if number not in (None, "") else None, used, derived.series_number_offset
    )


def _enhance_multiframe(
    paths: Sequence[Path],
    preset: str,
    enhancer: Enhancer,
    derived: DerivedSettings,
    used_series_numbers: Collection[int],
    progress: Progress | None,
    gate: Gate | None,
) -> EnhancedSeries:
    """One Enhanced CT/MR instance: its frames as a volume through the model, written back
    as one derived instance of the same SOP class."""
    if len(paths) != 1:
        raise InvalidSeriesError(
            f"the series holds {len(paths)} instances with a multi-frame one; one multi-frame "
            "instance per series is enhanced"
        )
    if enhancer.info.scale_factor != 1:
        raise InvalidSeriesError(
            f"preset {preset} resamples (x{enhancer.info.scale_factor}); multi-frame objects "
            "are enhanced on their own grid only"
        )
    stack = load_frames(Path(paths[0]))
    values, _, seconds = _run(enhancer, stack.values, stack.spacing_mm, progress)
    modality = str(stack.dataset.get("Modality", ""))
    problems = ([] if values.shape == stack.values.shape
                else [f"shape {values.shape}; expected {stack.values.shape}"])  # fmt: skip
    run = _Run(enhancer, stack.values, values, stack.spacing_mm, modality)
    report = _gated(gate, run, problems)
    sources = [str(stack.dataset.SOPInstanceUID)]
    if report is not None and not report.usable:
        return EnhancedSeries([], sources, enhancer.info, seconds, report)
    in_frame_order = np.empty_like(values)
    in_frame_order[stack.order] = values
    number = _series_number(stack.dataset, used_series_numbers, derived)
    info = derivation_info(preset, enhancer.info, derived, number)
    dataset = build_derived_multiframe(stack.dataset, in_frame_order, info, datetime.now(UTC))
    frames = int(dataset.get("NumberOfFrames", 1))
    wrong = [] if frames == len(stack.order) else [f"{frames} frames for {len(stack.order)}"]
    report = _with_geometry(report, wrong)
    return EnhancedSeries([dataset], sources, enhancer.info, seconds, report)


def enhance_series(
    paths: Sequence[Path],
    preset: str,
    enhancer: Enhancer,
    derived: DerivedSettings,
    used_series_numbers: Collection[int],
    progress: Progress | None = None,
    gate: Gate | None = None,
    sink: InstanceSink | None = None,
) -> EnhancedSeries:
    """Load the series at ``paths``, run ``enhancer`` and build the derived series.

    With ``gate``, the QA gate measures the output (``EnhancedSeries.qa``); an output that
    cannot be written (wrong grid, NaN or Inf) then comes back with no datasets instead of
    raising, so the caller can apply its failure policy.

    With ``sink`` and a streaming enhancer (:class:`models.base.StreamingEnhancer`), the
    derived instances of a single-frame series are built while the model runs and each is
    handed to ``sink`` (on another thread) as it is built; those handed over are the ones
    returned, unless building stopped on a failure (then the series is built again after
    the model, and only some were handed over). The sink may be called for instances of
    an output that then comes back with no datasets, or for a run that raises: the caller
    removes what its sink wrote then.

    Raises
    ------
    InvalidSeriesError
        When the files do not form a usable volume.
    ModelError
        When the model fails, or (without ``gate``) returns a volume on the wrong grid.
    """
    # One header read: a series does not mix SOP classes (classify.series_skip_reason).
    if paths and is_multiframe_enhanceable(Path(paths[0])):
        return _enhance_multiframe(
            paths, preset, enhancer, derived, used_series_numbers, progress, gate
        )
    volume = load_series(paths)
    scale = enhancer.info.scale_factor
    number = _series_number(volume.datasets[0], used_series_numbers, derived)
    info = derivation_info(preset, enhancer.info, derived, number)
    now = datetime.now(UTC)
    streamer = None
    if sink is not None and isinstance(enhancer, StreamingEnhancer):
        try:
            builder = DerivedSeriesBuilder(volume.datasets, info, now, scale)
        except ValueError as exc:  # the build after the model raises it, as without a sink
            logger.warning("derived instances are built after the model: %s", exc)
        else:
            streamer = _Streamer(builder, sink)
    try:
        values, spacing, seconds = _run(enhancer, volume.values, volume.spacing_mm, progress,
                                        streamer)  # fmt: skip
    except BaseException:
        if streamer is not None:
            streamer.finish(cancel=True)
        raise
    if streamer is not None:
        streamer.finish()
    depth, rows, columns = volume.values.shape
    problems = []
    if values.shape != (depth, rows * scale, columns * scale):
        problems.append(f"shape {values.shape}; expected "
                        f"{(depth, rows * scale, columns * scale)} for scale {scale}")  # fmt: skip
    expected_spacing = (
        volume.spacing_mm[0],
        volume.spacing_mm[1] / scale,
        volume.spacing_mm[2] / scale,
    )
    if not all(abs(a - b) < 1e-6 for a, b in zip(spacing, expected_spacing, strict=True)):
        problems.append(f"spacing {spacing}; expected {expected_spacing}")
    modality = str(volume.datasets[0].get("Modality", ""))
    run = _Run(enhancer, volume.values, values, volume.spacing_mm, modality)
    samples = derived.uncertainty_samples
    spread_map, map_problem = (
        _uncertainty_map(run, samples) if not problems and np.isfinite(values).all() else (None, "")
    )
    report = _gated(gate, run, problems, spread_map)
    sources = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    if report is not None and not report.usable:
        return EnhancedSeries([], sources, enhancer.info, seconds, report)
    streamed = streamer.complete(depth) if streamer is not None and not problems else None
    # The builder derives the new in-plane grid (Rows, Columns, PixelSpacing, positions)
    # from the values' shape.
    datasets = streamed or build_derived_series(volume.datasets, values, info, now)
    wrong = geometry_problems(volume.datasets, datasets, scale) if gate is not None else []
    report = _with_geometry(report, wrong)
    uncertainty = []
    if spread_map is not None:
        # The enhanced series' number plus the offset: derived numbers of other series in
        # the study (source + offset) stay clear of it.
        map_number = choose_series_number(
            number, {*used_series_numbers, number}, derived.series_number_offset
        )
        uncertainty = build_uncertainty_series(
            volume.datasets, spread_map, info, now, samples + 1, map_number,
            str(datasets[0].SeriesInstanceUID),
        )  # fmt: skip
    return EnhancedSeries(datasets, sources, enhancer.info, seconds, report, uncertainty,
                          map_problem)  # fmt: skip
