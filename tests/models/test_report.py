"""Tests of report output: CSV round trip, Markdown tables and the comparison PNG."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from models.report import comparison_figure, figure_size_px, markdown_table, write_csv

ROWS = [
    {"model": "nlm", "psnr_db": 41.23456789, "noise_reduction_pct": 55.5, "slices": 3},
    {"model": "dncnn|v2", "psnr_db": math.inf, "noise_reduction_pct": None, "slices": 12},
]


def test_csv_round_trip(tmp_path: Path) -> None:
    path = write_csv(ROWS, tmp_path / "sub" / "metrics.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        back = list(csv.DictReader(handle))
    assert list(back[0]) == ["model", "psnr_db", "noise_reduction_pct", "slices"]
    assert back[0]["model"] == "nlm"
    assert float(back[0]["psnr_db"]) == ROWS[0]["psnr_db"]
    assert float(back[1]["psnr_db"]) == math.inf
    assert back[1]["noise_reduction_pct"] == ""
    assert int(back[1]["slices"]) == 12


def test_markdown_table_format() -> None:
    table = markdown_table(ROWS, ["model", "psnr_db", "slices"], floatfmt=".2f")
    assert table.splitlines() == [
        "| model | psnr_db | slices |",
        "| --- | ---: | ---: |",
        "| nlm | 41.23 | 3 |",
        "| dncnn\\|v2 | inf | 12 |",
    ]
    assert table.endswith("\n")
    default = markdown_table(ROWS)
    assert default.splitlines()[0] == "| model | psnr_db | noise_reduction_pct | slices |"
    assert default.splitlines()[3].endswith("| inf |  | 12 |")


def test_comparison_figure_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    reference = np.full((96, 128), 40.0)
    noisy = reference + 20 * rng.standard_normal(reference.shape)
    enhanced = reference + 5 * rng.standard_normal(reference.shape)
    panels = [
        ("input", noisy),
        ("enhanced", enhanced),
        ("reference", reference),
        ("difference", enhanced - reference),
    ]
    annotations = {"enhanced": "PSNR 40.1 dB\nSSIM 0.95", "model": "nlm"}
    path = comparison_figure(tmp_path / "cmp.png", panels, (-160.0, 240.0), annotations)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    width, height = figure_size_px(4)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.05  # something was drawn
    again = comparison_figure(tmp_path / "cmp2.png", panels, (-160.0, 240.0), annotations)
    assert again.read_bytes() == data  # deterministic


def test_comparison_figure_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        comparison_figure(tmp_path / "x.png", [("a", np.zeros((2, 3, 4)))], (0.0, 1.0))
    with pytest.raises(ValueError, match="window"):
        comparison_figure(tmp_path / "x.png", [("a", np.zeros((3, 4)))], (1.0, 1.0))
