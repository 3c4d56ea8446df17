"""The evaluation report: CSV, Markdown with the quality bar, figures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from models.evaluate import EvalCase, evaluate
from models.metrics import nlm_baseline
from models.phantoms import low_contrast_phantom
from models.simulation import LowDoseSimulator, ScanGeometry, calibrate_i0
from pacs_node.evaluation import write_report


def test_report_on_a_simulated_low_dose_phantom(tmp_path: Path) -> None:
    phantom = low_contrast_phantom(size=256, pixel_spacing_mm=1.4, seed=3)
    simulator = LowDoseSimulator(phantom.image, ScanGeometry(n_views=180, pixel_spacing_mm=1.4))
    roi = np.logical_or.reduce(phantom.uniform_rois)
    i0 = calibrate_i0(simulator, roi, 20.0, 0.25)
    rng = np.random.default_rng(0)
    noisy = np.stack([simulator.low_dose(0.25, i0, 10.0, rng) for _ in range(3)])
    reference = np.repeat(phantom.image[None], 3, axis=0)
    added = (noisy - reference)[1][roi]
    assert abs(float(added.std()) - 20.0) < 3.0 and abs(float(added.mean())) < 2.0
    case = EvalCase("phantom", phantom.name, reference, noisy, 20.0, 1.4, phantom.uniform_rois,
                    phantom.disks, phantom.body_mask)  # fmt: skip
    methods = {"input": lambda v, s: v[1], "nlm": lambda v, s: nlm_baseline(v[1], s),
               "model": lambda v, s: nlm_baseline(v[1], 1.5 * s)}  # fmt: skip
    rows, outputs = evaluate([case], methods)
    report = write_report(rows, outputs, [case], ["model"], tmp_path / "evaluation", "# Test")
    text = report.read_text()
    assert report == tmp_path / "evaluation.md"
    assert "| phantom | nlm |" in text and "## Quality bar" in text
    assert text.count("PASS:") + text.count("FAIL:") == 6
    with open(tmp_path / "evaluation" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    figure = tmp_path / "evaluation" / "figures" / "phantom.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "evaluation/figures/phantom.png" in text
