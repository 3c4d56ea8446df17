"""`pacs-node enhance` and `pacs-node models list`: offline use through the worker's code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import SecondaryCaptureImageStorage

from pacs_node.offline import enhance_folder
from pacs_node.settings import Settings
from tests.helpers.synthetic import make_ct_series

CLI = str(Path(sys.executable).parent / "pacs-node")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_NODE_")}
    env.update(PACS_NODE_DATA_DIR=str(tmp_path / "var"), COLUMNS="200")
    return env


def test_enhance_folder_writes_derived_series_and_skips_the_rest(tmp_path: Path) -> None:
    sources = make_ct_series(tmp_path / "in" / "a", n_slices=4, rows=32, cols=32, series_number=2)
    other = make_ct_series(tmp_path / "in" / "b", n_slices=1, rows=32, cols=32, series_number=9)
    capture = other[0]
    capture.SOPClassUID = SecondaryCaptureImageStorage
    capture.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    for path in (tmp_path / "in" / "b").iterdir():
        path.unlink()
    capture.save_as(tmp_path / "in" / "b" / "sc.dcm", enforce_file_format=True)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    seen: list[tuple[int, int]] = []

    def factory(_label: str, _total: int):  # type: ignore[no-untyped-def]
        return lambda done, total: seen.append((done, total))

    settings = Settings(data_dir=tmp_path / "var")
    outcomes = enhance_folder(settings, tmp_path / "in", tmp_path / "out", "identity", factory)
    by_status = {o.status: o for o in outcomes}
    assert set(by_status) == {"DONE", "SKIPPED"}
    assert "Secondary Capture" in by_status["SKIPPED"].message
    done = by_status["DONE"]
    assert done.output_dir == tmp_path / "out" / "S1002"
    files = sorted(done.output_dir.iterdir())
    assert [f.name for f in files] == [f"IM{i:05d}.dcm" for i in range(1, 5)]
    derived = [pydicom.dcmread(f) for f in files]
    by_source = {str(s.SOPInstanceUID): s for s in sources}
    for ds in derived:
        source = by_source[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(ds.pixel_array, source.pixel_array)
        assert ds.SeriesNumber == 1002 and "identity" in ds.SeriesDescription
    assert seen[-1] == (4, 4)


def test_enhance_folder_writes_the_uncertainty_map_in_its_own_folder(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in", n_slices=3, rows=32, cols=32, series_number=2)
    settings = Settings(data_dir=tmp_path / "var",
                        derived={"uncertainty_samples": 1})  # type: ignore[arg-type]  # fmt: skip
    [done] = enhance_folder(settings, tmp_path / "in", tmp_path / "out", "ct-diffusion")
    assert done.status == "DONE" and "uncertainty map in S2002" in done.message
    maps = [pydicom.dcmread(f) for f in sorted((tmp_path / "out" / "S2002").iterdir())]
    enhanced = pydicom.dcmread(tmp_path / "out" / "S1002" / "IM00001.dcm")
    assert len(maps) == 3 and all("uncertainty" in ds.SeriesDescription for ds in maps)
    assert maps[0].SeriesInstanceUID != enhanced.SeriesInstanceUID


def test_cli_enhance_and_models_list(tmp_path: Path) -> None:
    make_ct_series(tmp_path / "in", n_slices=3, rows=32, cols=32)
    result = subprocess.run(
        [CLI, "enhance", "--preset", "gaussian", str(tmp_path / "in"), str(tmp_path / "out")],
        env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DONE" in result.stdout
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 3
    bad = subprocess.run(
        [CLI, "enhance", "--preset", "nope", str(tmp_path / "in"), str(tmp_path / "out2")],
        env=_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1 and "unknown preset 'nope'" in bad.stdout
    listing = subprocess.run(
        [CLI, "models", "list", "--json"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = {row["preset"]: row for row in json.loads(listing.stdout)}
    assert rows["gaussian"]["status"] == "ready"
    assert rows["ct-denoise"]["default"] is True
    for shipped in ("ct-denoise", "ct-denoise-fast", "ct-sr2x", "ct-diffusion", "mr-denoise"):
        assert rows[shipped]["status"] == "ready", shipped  # shipped weights
    presets = tmp_path / "presets.yaml"
    presets.write_text("ghost:\n  description: x\n  modality: CT\n  model: ghost-model\n")
    ghost = subprocess.run(
        [CLI, "models", "list", "--json"],
        env={**_env(tmp_path), "PACS_NODE_MODELS__PRESETS_FILE": str(presets)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert json.loads(ghost.stdout)[0]["status"] == "weights not installed"
