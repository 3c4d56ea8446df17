"""The pipelined worker path: derived instances are built and handed to the worker's sink
while the model computes later slices, and the result is the one of building after it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom.dataset import FileDataset

from pacs_node.enhancers import EnhancerCache
from pacs_node.errors import ModelError
from pacs_node.pipeline import enhance_series
from pacs_node.settings import Settings
from tests.helpers.enhancers import FailsHalfway
from tests.helpers.synthetic import make_ct_series

SLICES = 12


@pytest.fixture()
def series(tmp_path: Path) -> list[Path]:
    make_ct_series(tmp_path / "in", n_slices=SLICES, rows=48, cols=48, noise_hu=20.0)
    return sorted((tmp_path / "in").iterdir())


def _settings(tmp_path: Path) -> Settings:
    # Batches of 4 slices on the host path: the engine hands over three runs of finished
    # slices (a GPU's device-resident path would hand over the volume at the end).
    return Settings(data_dir=tmp_path / "var", device="cpu", models={"batch_size": 4})


def test_instances_are_handed_over_while_the_model_computes_later_slices(
    tmp_path: Path, series: list[Path]
) -> None:
    settings = _settings(tmp_path)
    enhancer = EnhancerCache(settings).get("ct-denoise-fast")
    handed: list[FileDataset] = []
    arrived = threading.Condition()
    waited_for: list[int] = []

    def sink(ds: FileDataset) -> None:
        with arrived:
            handed.append(ds)
            arrived.notify_all()

    def progress(done: int, total: int) -> None:
        # The model waits, after each batch but the last, until the builder thread has
        # handed over that batch's instances: proof that they leave before the model ends.
        if done < total:
            with arrived:
                assert arrived.wait_for(lambda: len(handed) >= done, timeout=30)
            waited_for.append(done)

    result = enhance_series(series, "ct-denoise-fast", enhancer, settings.derived, set(),
                            progress=progress, sink=sink)  # fmt: skip
    assert waited_for == [4, 8]
    assert len(handed) == SLICES
    assert [id(ds) for ds in result.datasets] == [id(ds) for ds in handed]  # in slice order
    # The same series as building after the model: UIDs and pixels.
    plain = enhance_series(series, "ct-denoise-fast", enhancer, settings.derived, set())
    assert [ds.SOPInstanceUID for ds in plain.datasets] == [
        ds.SOPInstanceUID for ds in result.datasets
    ]
    for ours, theirs in zip(result.datasets, plain.datasets, strict=True):
        assert ours.PixelData == theirs.PixelData
        assert ours.ImagePositionPatient == theirs.ImagePositionPatient


def test_a_sink_that_fails_leaves_the_series_built_after_the_model(
    tmp_path: Path, series: list[Path]
) -> None:
    settings = _settings(tmp_path)
    enhancer = EnhancerCache(settings).get("ct-denoise-fast")
    handed: list[str] = []

    def sink(ds: FileDataset) -> None:
        if len(handed) == 5:
            raise OSError("disk full")
        handed.append(str(ds.SOPInstanceUID))

    result = enhance_series(series, "ct-denoise-fast", enhancer, settings.derived, set(),
                            sink=sink)  # fmt: skip
    assert len(handed) == 5  # streaming stopped at the failure ...
    assert len(result.datasets) == SLICES  # ... and the whole series was built after it
    assert [str(ds.SOPInstanceUID) for ds in result.datasets[:5]] == handed


def test_a_model_that_fails_midway_is_a_model_error_and_the_builder_thread_ends(
    tmp_path: Path, series: list[Path]
) -> None:
    settings = _settings(tmp_path)
    handed: list[FileDataset] = []
    written = threading.Event()

    def sink(ds: FileDataset) -> None:
        handed.append(ds)
        written.set()

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ModelError, match="out of luck"):
        enhance_series(series, "p", FailsHalfway(written), settings.derived, set(), sink=sink)
    assert len(handed) == 1  # handed over before the failure: the caller's to remove
    assert "derived-builder" not in {t.name for t in threading.enumerate()} - before
