"""The evaluation report: CSV, Markdown with the quality bar, figures."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lab.evaluation import write_report
from models.evaluate import EvalCase, evaluate
from models.metrics import nlm_baseline
from models.phantoms import low_contrast_phantom
from models.simulation import LowDoseSimulator, ScanGeometry, calibrate_i0


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
    repeats = [np.stack([simulator.low_dose(0.25, i0, 10.0, rng) for _ in range(3)])]
    case = EvalCase("phantom", phantom.name, reference, noisy, 20.0, 1.4, phantom.uniform_rois,
                    phantom.disks, phantom.body_mask, repeats)  # fmt: skip
    methods = {"input": lambda v, s: v[1], "nlm": lambda v, s: nlm_baseline(v[1], s),
               "model": lambda v, s: nlm_baseline(v[1], 1.5 * s)}  # fmt: skip
    rows, outputs = evaluate([case], methods)
    report = write_report(rows, outputs, [case], ["model"], tmp_path / "evaluation", "# Test")
    text = report.read_text()
    assert report == tmp_path / "evaluation.md"
    assert "| phantom | nlm |" in text and "## Quality bar" in text
    assert text.count("PASS:") + text.count("FAIL:") == 6
    assert "worst ROI of the worst phantom, mean of 2 noise draws)" in text
    assert f"HU ({phantom.name})" in text
    with open(tmp_path / "evaluation" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    figure = tmp_path / "evaluation" / "figures" / "phantom.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "evaluation/figures/phantom.png" in text
    assert "## Architecture comparison" not in text
    (tmp_path / "evaluation" / "autoencoders.md").write_text("# table")
    report = write_report(rows, outputs, [case], ["model"], tmp_path / "evaluation", "# Test")
    assert "[evaluation/autoencoders.md](evaluation/autoencoders.md)" in report.read_text()


def test_super_resolution_section_reports_baselines_and_the_bar(tmp_path: Path) -> None:
    from lab.evaluation import super_resolution_rows
    from models.checkpoint import ModelCard, save_checkpoint
    from models.networks import build_network
    from pacs_node.settings import Settings

    card = ModelCard(
        name="sr-untrained", version="0", task="super_resolution", modality="CT",
        architecture="sr_light", arch_kwargs={"features": 8}, scale_factor=2,
    )  # fmt: skip
    save_checkpoint(tmp_path / "weights", build_network("sr_light", features=8), card)
    presets = tmp_path / "presets.yaml"
    presets.write_text("sr:\n  description: untrained\n  modality: CT\n  model: sr-untrained\n")
    models = {"presets_file": presets, "weights_dir": tmp_path / "weights"}
    settings = Settings(data_dir=tmp_path, device="cpu", models=models)  # type: ignore[arg-type]
    phantom = low_contrast_phantom(size=256, pixel_spacing_mm=1.4, seed=4)
    reference = np.repeat(phantom.image[None], 3, axis=0)
    noisy = reference + np.random.default_rng(1).normal(0, 10, reference.shape).astype(np.float32)
    case = EvalCase("phantom", phantom.name, reference, noisy, 10.0, 1.4, phantom.uniform_rois,
                    phantom.disks, phantom.body_mask)  # fmt: skip
    rows = super_resolution_rows(settings, [case], ["sr"])
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"bicubic", "bicubic+linear", "sr"}
    # An untrained LightSR is bicubic interpolation (up to clipping to the valid range).
    assert abs(by_method["sr"]["psnr_full_db"] - by_method["bicubic"]["psnr_full_db"]) < 0.05
    eval_rows, outputs = evaluate([case], {"input": lambda v, s: v[1], "nlm": lambda v, s: v[1]})
    report = write_report(
        eval_rows, outputs, [case], [], tmp_path / "evaluation", "# T", rows, ["sr"]
    )
    text = report.read_text()
    assert "## Super-resolution ×2" in text
    assert "FAIL: sr on phantom beats bicubic by ≥ 1.5 dB" in text
    assert (tmp_path / "evaluation" / "super_resolution.csv").exists()


def test_diffusion_seed_spread_is_zero_untrained_and_positive_when_trained(
    tmp_path: Path,
) -> None:
    import torch

    from lab.evaluation import diffusion_seed_rows, write_report
    from models.checkpoint import ModelCard, save_checkpoint
    from models.networks import build_network
    from pacs_node.settings import Settings

    kwargs = {"in_channels": 3, "steps": 4, "noise_scale": 0.01, "features": 8, "depth": 1}
    untrained = build_network("cold_diffusion", **kwargs)
    trained_like = build_network("cold_diffusion", **kwargs)
    torch.manual_seed(0)
    for parameter in trained_like.parameters():
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    presets = tmp_path / "presets.yaml"
    text = ""
    for name, network in (("diff-untrained", untrained), ("diff-trained", trained_like)):
        card = ModelCard(
            name=name, version="0", task="diffusion", modality="CT",
            architecture="cold_diffusion", arch_kwargs=kwargs, context_slices=3,
        )  # fmt: skip
        save_checkpoint(tmp_path / "weights", network, card)
        text += f"{name}:\n  description: t\n  modality: CT\n  model: {name}\n"
    presets.write_text(text + "gauss:\n  description: t\n  modality: any\n  classical: gaussian\n")
    models = {"presets_file": presets, "weights_dir": tmp_path / "weights"}
    settings = Settings(data_dir=tmp_path, device="cpu", models=models)  # type: ignore[arg-type]
    phantom = low_contrast_phantom(size=256, pixel_spacing_mm=1.4, seed=4)
    reference = np.repeat(phantom.image[None], 3, axis=0)
    noisy = reference + np.random.default_rng(1).normal(0, 10, reference.shape).astype(np.float32)
    case = EvalCase("phantom", phantom.name, reference, noisy, 10.0, 1.4, phantom.uniform_rois,
                    phantom.disks, phantom.body_mask)  # fmt: skip
    rows = diffusion_seed_rows(settings, [case], ["diff-untrained", "diff-trained", "gauss"])
    by_method = {r["method"]: r for r in rows}
    assert set(by_method) == {"diff-untrained", "diff-trained"}  # the filter has no seeds
    assert by_method["diff-untrained"]["max_pixel_std_hu"] < 0.01
    assert by_method["diff-trained"]["mean_pixel_std_hu"] > 0.01
    assert by_method["diff-trained"]["seeds"] == 5

    def shifted(offset: float) -> Callable[[np.ndarray, float], np.ndarray]:
        return lambda v, s: v[1] + offset

    same = {"input": shifted(0), "nlm": shifted(0), "cnn": shifted(0),
            "diff-untrained": shifted(0), "diff-trained": shifted(10)}  # fmt: skip
    eval_rows, outputs = evaluate([case], same)
    report = write_report(eval_rows, outputs, [case], ["cnn", "diff-trained"],
                          tmp_path / "evaluation", "# T", seed_rows=rows)  # fmt: skip
    text = report.read_text()
    assert "## Diffusion: spread across seeds" in text
    assert "- PASS: diff-untrained vs cnn on phantom, [-1024, 3072]" in text
    assert "- FAIL: diff-trained vs cnn on phantom, [-160, 240]" in text
    # One noise draw: the bias has no standard error, and none is printed.
    assert re.search(r"mean of 1 noise draws\): \d+\.\d\d HU \(lc-", text)
    assert "± nan" not in text
    assert (tmp_path / "evaluation" / "diffusion_seeds.csv").exists()


def test_validation_split_never_touches_the_test_slices() -> None:
    from lab.evaluation import EvaluationConfig, real_ct_centres

    assert real_ct_centres(34, 4, "test") == [1, 11, 22, 32]  # the shipped report's slices
    assert real_ct_centres(9, 4, "validation") == []  # no room between the test slices
    for length in (34, 20, 60):
        test = real_ct_centres(length, 4, "test")
        validation = real_ct_centres(length, 4, "validation")
        assert validation and len(validation) <= 3
        # each case reads its centre and both neighbours: the contexts never overlap
        test_context = {c + d for c in test for d in (-1, 0, 1)}
        assert all(c + d not in test_context for c in validation for d in (-1, 0, 1))
        assert all(1 <= c <= length - 2 for c in validation)
    with pytest.raises(ValueError, match="unknown split"):
        EvaluationConfig(split="train")
    with pytest.raises(ValueError, match="bias_draws"):
        EvaluationConfig(bias_draws=0)


def test_later_noise_draws_leave_the_first_draw_unchanged() -> None:
    from lab.evaluation import _low_dose

    phantom = low_contrast_phantom(size=256, pixel_spacing_mm=1.4, seed=2)
    reference = np.repeat(phantom.image[None], 3, axis=0)
    roi = np.logical_or.reduce(phantom.uniform_rois)
    [single], i0 = _low_dose(reference, 1.4, roi, 20.0, seed=3)
    draws, i0_again = _low_dose(reference, 1.4, roi, 20.0, seed=3, draws=3)
    assert i0_again == i0 and len(draws) == 3
    # The report's other metrics use the first draw: asking for more draws keeps it, and it
    # is the draw the single-draw code before the bias draws made (values recorded from it).
    np.testing.assert_array_equal(draws[0], single)
    assert i0 == pytest.approx(246905.97433123, rel=1e-9)
    recorded = [35.3827, 47.8706, 37.7401, 25.7968, 56.5424, 24.0378]
    values = [float(single[z, 128, c]) for z in range(3) for c in (100, 128)]
    np.testing.assert_allclose(values, recorded, atol=1e-3)
    assert all(np.std(d - draws[0]) > 10 for d in draws[1:])  # independent noise


def test_pacs_lab_evaluate_refuses_an_unknown_split(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lab.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--split", "tuning",
                                      "--output", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 2
    assert "unknown split" in result.output
    assert not (tmp_path / "out").exists()
