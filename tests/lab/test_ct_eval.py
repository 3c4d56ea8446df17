"""`pacs-lab evaluate-ct` on tiny synthetic slices: metrics, confidence intervals, the bar."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from typer.testing import CliRunner

from lab.ct_eval import (
    CtEvalConfig,
    CtEvalResult,
    Memoised,
    Method,
    Reference,
    aggregate,
    aggregate_phantoms,
    baseline_methods,
    bm3d_available,
    evaluate_all,
    evaluate_low_dose,
    evaluate_phantoms,
    evaluate_slices,
    evaluation_phantoms,
    paired_differences,
    scan_field,
    t_interval,
)
from lab.ct_report import bar_checks, subsample, write_ct_report
from lab.data import SliceEntry
from lab.noise import TESTING, NoiseRecipe, soft_tissue_mask
from models.fanbeam import FanBeamGeometry
from models.metrics import gaussian_baseline
from pacs_node.qa import edge_correlation, flat_noise_sigma

torch.set_num_threads(1)

# The test recipe: TESTING's kernels and doses, a few views only (tiny images, fast).
RECIPE: NoiseRecipe = dataclasses.replace(
    TESTING, geometries=(FanBeamGeometry(541, 949, n_views=90),)
)
LEVELS = (20.0, 70.0)
SPACING_MM = 3.5


def synthetic_slice(seed: int) -> np.ndarray:
    """96 x 96 HU: a soft-tissue ellipse with texture, a bone disk, air, padding outside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96] - 47.5
    image = np.full((96, 96), -1000.0)
    body = (xx / 40) ** 2 + (yy / 32) ** 2 <= 1
    texture = ndimage.gaussian_filter(rng.normal(0, 60, (96, 96)), 3)
    image[body] = 40.0 + texture[body]
    image[(xx - 25) ** 2 + yy**2 < 25] = 700.0
    image[xx**2 + yy**2 > 47**2] = -2048.0  # padding outside the reconstruction circle
    return image.astype(np.float32)


def plus_five(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.where(scan_field(image), image + np.float32(5.0), image)


MODELS: dict[str, Method] = {
    "identity": lambda image, sigma: image,
    "smooth": lambda image, sigma: gaussian_baseline(np.maximum(image, -1024), 1.5),
    "plus5": plus_five,
}


@pytest.fixture(scope="module")
def result() -> CtEvalResult:
    references = [
        Reference("a/1", "A smooth", synthetic_slice(1), SPACING_MM),
        Reference("a/2", "A smooth", synthetic_slice(2), SPACING_MM),
        Reference("b/1", "B sharp", synthetic_slice(3), SPACING_MM),
    ]
    clean = synthetic_slice(4)
    noisy = clean + np.where(
        scan_field(clean), np.random.default_rng(5).normal(0, 25, clean.shape), 0
    ).astype(np.float32)
    low_dose = [Reference("low/1", "A smooth", noisy, SPACING_MM)]
    phantoms = evaluation_phantoms(1, size=192, base_spacing_mm=2.2)
    config = CtEvalConfig(levels_hu=LEVELS, phantoms=1, bias_draws=2, bar_method="identity")
    return evaluate_all(references, low_dose, phantoms, baseline_methods(), MODELS, config,
                        RECIPE, log=lambda _: None)  # fmt: skip


def _rows(result: CtEvalResult, method: str) -> list[dict]:
    return [r for r in result.rows if r["method"] == method]


def test_t_interval_on_known_numbers() -> None:
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(2.4841, abs=1e-4)  # t(0.975, 2) / sqrt(3)
    mean, half = t_interval([5.0, math.nan])
    assert mean == 5.0 and math.isnan(half)
    assert all(math.isnan(v) for v in t_interval([]))


def test_paired_difference_and_its_interval() -> None:
    rows = [
        {"slice": f"s{i}", "group": "g", "level_hu": 20.0, "method": method, "psnr_full_db": value}
        for i, (model, nlm) in enumerate([(31.0, 30.0), (33.0, 31.0), (35.0, 32.0)])
        for method, value in (("model", model), ("nlm", nlm))
    ]
    diffs = paired_differences(rows, "model", "nlm", ["psnr_full_db"])
    assert [d["psnr_full_db"] for d in diffs] == [1.0, 2.0, 3.0]
    assert {d["method"] for d in diffs} == {"model - nlm"}
    cells = {c["group"]: c for c in aggregate(diffs, ["psnr_full_db"])}
    assert set(cells) == {"all", "g"}
    assert cells["all"]["n"] == 3 and cells["all"]["mean"] == 2.0
    assert cells["all"]["ci_low"] == pytest.approx(2.0 - 2.4841, abs=1e-4)


def test_identity_keeps_the_input_psnr_and_noise(result: CtEvalResult) -> None:
    inputs, identity = _rows(result, "input"), _rows(result, "identity")
    assert len(inputs) == 3 * len(LEVELS)
    for a, b in zip(inputs, identity, strict=True):
        assert b["psnr_full_db"] == a["psnr_full_db"]
        assert b["psnr_soft_tissue_db"] == a["psnr_soft_tissue_db"]
        assert b["noise_reduction_pct"] == pytest.approx(0.0, abs=1e-9)
        assert b["nps_mean_freq_shift_pct"] == pytest.approx(0.0, abs=1e-9)
        # The noise is scaled to the level's σ in the slice's soft tissue.
        assert b["noise_sigma_hu"] == pytest.approx(b["level_hu"], rel=1e-4)
    by_level = {r["level_hu"]: r["psnr_full_db"] for r in inputs if r["slice"] == "a/1"}
    assert by_level[20.0] > by_level[70.0] + 8  # 20*log10(70/20) = 10.9 dB


def test_noise_is_added_in_the_scan_field_only_and_is_reproducible(
    result: CtEvalResult,
) -> None:
    name = next(key[0] for key in result.outputs)
    reference = next(r.hu for r in result.references if r.name == name)
    noisy = result.outputs[(name, 70.0, "input")]
    padding = reference < -1024
    assert padding.any() and np.array_equal(noisy[padding], reference[padding])
    assert np.std((noisy - reference)[~padding]) > 10
    _, outputs = evaluate_slices(
        [Reference(name, "A smooth", reference, SPACING_MM)], {"input": MODELS["identity"]},
        LEVELS, RECIPE, seed=0, keep=[name],
    )  # fmt: skip
    assert np.array_equal(outputs[(name, 70.0, "input")], noisy)


def test_smoothing_reduces_noise_and_plus5_is_a_bias(result: CtEvalResult) -> None:
    # At 20 HU on 3.5 mm pixels, blurring the bone into the soft tissue next to it costs
    # more than the noise it removes; at 70 HU the noise dominates.
    for row in _rows(result, "smooth") + _rows(result, "gaussian"):
        assert row["noise_reduction_pct"] > 20 or row["level_hu"] == 20.0, row
    for row in _rows(result, "nlm"):
        assert row["noise_reduction_pct"] > 20, row
    for row in _rows(result, "smooth"):
        assert row["nps_mean_freq_shift_pct"] < -10  # smoothing coarsens the residual
    for plus, same in zip(_rows(result, "plus5"), _rows(result, "identity"), strict=True):
        assert plus["bias_hu"] - same["bias_hu"] == pytest.approx(5.0, abs=1e-3)
        assert plus["noise_sigma_hu"] == pytest.approx(same["noise_sigma_hu"], abs=1e-3)
    if bm3d_available():
        for row in _rows(result, "bm3d"):
            assert row["noise_reduction_pct"] > 20, row


def test_groups_have_intervals_and_n1_has_none(result: CtEvalResult) -> None:
    cells = {(c["level_hu"], c["group"], c["method"], c["metric"]): c for c in result.groups}
    assert cells[(20.0, "all", "input", "psnr_full_db")]["n"] == 3
    assert cells[(20.0, "A smooth", "input", "psnr_full_db")]["n"] == 2
    single = cells[(20.0, "B sharp", "input", "psnr_full_db")]
    assert single["n"] == 1 and math.isnan(single["half_width"])
    assert not math.isnan(cells[(20.0, "all", "input", "psnr_full_db")]["half_width"])
    paired = {(c["group"], c["method"]) for c in result.paired}
    assert ("all", "smooth - nlm") in paired
    assert (("all", "plus5 - bm3d") in paired) == bm3d_available()


def test_bar_fails_below_nlm_and_for_a_bias(result: CtEvalResult) -> None:
    checks = bar_checks(result)  # bar method: identity
    psnr_nlm = [c for c in checks if "NLM + 1 dB" in c.criterion]
    assert psnr_nlm and all(c.passed is False for c in psnr_nlm)
    assert any("does not clear" in c.detail for c in psnr_nlm if c.group == "all")
    reduction = [c for c in checks if "reduced" in c.criterion]
    assert [c.level_hu for c in reduction if c.group == "all"] == [70.0]  # not at 20 HU
    assert all(c.passed is False for c in reduction)
    bias = [c for c in bar_checks(dataclasses.replace(result, bar_method="plus5"))
            if "bias" in c.criterion]  # fmt: skip
    assert [c.level_hu for c in bias] == list(LEVELS)
    assert all(c.passed is False for c in bias)
    worst = {p["level_hu"]: p for p in result.phantoms if p["method"] == "plus5"}
    assert all(p["worst_abs_bias_hu"] > 4.0 for p in worst.values())
    assert all(c.verdict in ("PASS", "FAIL", "N/A") for c in checks)


def test_phantom_bias_and_cnr_on_the_exact_truth() -> None:
    [phantom] = evaluation_phantoms(1, size=192, base_spacing_mm=2.2)
    truth = phantom.image.astype(np.float32)
    methods: dict[str, Method] = {
        "input": lambda image, sigma: image,
        "truth": lambda image, sigma: truth,
        "truth+5": lambda image, sigma: truth + np.float32(5.0),
        "smooth": lambda image, sigma: gaussian_baseline(image, 1.0),
    }
    rows = evaluate_phantoms([phantom], methods, [40.0], RECIPE, seed=1, draws=2,
                             log=lambda _: None)  # fmt: skip
    by = {r["method"]: r for r in aggregate_phantoms(rows)}
    assert by["truth"]["worst_abs_bias_hu"] == 0.0 and by["truth"]["worst_bias_se_hu"] == 0.0
    assert by["truth+5"]["worst_bias_hu"] == pytest.approx(5.0, abs=1e-4)
    assert by["input"]["cnr_ratio"] == pytest.approx(1.0)
    assert by["smooth"]["cnr_ratio"] > 1.0  # smoothing raises the CNR of large disks
    assert by["input"]["draws"] == 2 and by["input"]["noise_reduction_pct"] == 0.0


def test_low_dose_figures_without_a_reference() -> None:
    clean = synthetic_slice(7)
    rng = np.random.default_rng(8)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, clean.shape), 0.7)
    noisy = (clean + np.where(scan_field(clean), noise * 25 / noise.std(), 0)).astype(np.float32)
    soft = soft_tissue_mask(noisy)
    assert flat_noise_sigma(noise * 25 / noise.std(), soft) == pytest.approx(25, rel=0.15)
    methods: dict[str, Method] = {
        "input": lambda image, sigma: image,
        "clean": lambda image, sigma: clean,  # removes exactly the noise
        "blur": lambda image, sigma: gaussian_baseline(np.maximum(image, -1024), 3.0),
    }
    rows, outputs = evaluate_low_dose([Reference("low", "g", noisy, SPACING_MM)], methods,
                                      log=lambda _: None)  # fmt: skip
    by = {r["method"]: r for r in rows}
    assert by["input"]["noise_reduction_pct"] == 0.0 and by["input"]["bias_hu"] == 0.0
    assert math.isnan(by["input"]["edge_correlation"])
    assert by["clean"]["noise_reduction_pct"] > 50 and by["blur"]["noise_reduction_pct"] > 50
    assert by["blur"]["edge_correlation"] > by["clean"]["edge_correlation"] + 0.2
    assert set(outputs) == {("low", m) for m in methods}
    body = ndimage.binary_dilation(noisy > -500, iterations=3)
    assert math.isnan(edge_correlation(noisy, noisy, body))


def test_report_files_and_verdicts(result: CtEvalResult, tmp_path: Path) -> None:
    result = dataclasses.replace(result, command="pacs-lab evaluate-ct --seed 0")
    report = write_ct_report(result, tmp_path / "ct")
    assert report == tmp_path / "ct.md"
    text = report.read_text()
    assert "**The bar is missed** by `identity`" in text and "- FAIL: 70 HU, all:" in text
    assert "pacs-lab evaluate-ct --seed 0" in text and "butterworth" in text
    with open(tmp_path / "ct" / "results.csv") as handle:
        assert (
            len(list(csv.DictReader(handle)))
            == len(result.rows)
            == 3 * 2 * len({r["method"] for r in result.rows})
        )
    for name in ("groups.csv", "phantoms.csv", "low_dose.csv"):
        assert (tmp_path / "ct" / name).stat().st_size > 0
    summary = json.loads((tmp_path / "ct" / "summary.json").read_text())
    assert summary["bar_met"] is False and summary["recipe"]["windows"] == ["butterworth"]
    assert summary["command"] == "pacs-lab evaluate-ct --seed 0"
    figures = sorted(p.name for p in (tmp_path / "ct" / "figures").iterdir())
    assert figures == ["a-smooth-20hu.png", "a-smooth-70hu.png", "b-sharp-20hu.png",
                       "b-sharp-70hu.png", "low-dose-1.png"]  # fmt: skip
    assert "](ct/figures/low-dose-1.png)" in text


def test_subsample_spreads_evenly_per_collection() -> None:
    def entry(collection: str, index: int) -> SliceEntry:
        return SliceEntry(collection, f"{index:03d}.dcm", "", "p", "test", "GE", "", "SOFT",
                          100.0, False, None)  # fmt: skip

    entries = [entry("a", i) for i in range(10)] + [entry("b", i) for i in range(2)]
    kept = subsample(entries, 3)
    assert [e.member for e in kept if e.collection == "a"] == ["000.dcm", "004.dcm", "009.dcm"]
    assert len([e for e in kept if e.collection == "b"]) == 2
    assert subsample(entries, None) == entries


def test_metrics_ignore_the_padding_outside_the_scan_field() -> None:
    reference = synthetic_slice(9)
    methods: dict[str, Method] = {
        "input": lambda image, sigma: image,
        "padding to 0 HU": lambda image, sigma: np.where(reference < -1024, 0, image),
    }
    rows, _ = evaluate_slices([Reference("s", "g", reference, SPACING_MM)], methods, [20.0],
                              RECIPE, log=lambda _: None)  # fmt: skip
    same, changed = rows
    for metric in ("psnr_full_db", "psnr_soft_tissue_db", "ssim_full", "bias_hu"):
        assert changed[metric] == pytest.approx(same[metric], abs=1e-9), metric


def test_presets_and_candidate_cards_run_as_blind_methods(tmp_path: Path) -> None:
    from lab.ct_report import model_methods
    from models.checkpoint import ModelCard, save_checkpoint
    from models.networks import build_network
    from pacs_node.settings import Settings

    card = ModelCard(name="candidate", version="0.2", task="denoise", modality="CT",
                     architecture="dncnn", arch_kwargs={"features": 4, "depth": 2})  # fmt: skip
    path = save_checkpoint(tmp_path / "weights", build_network("dncnn", features=4, depth=2), card)
    methods = model_methods(Settings(data_dir=tmp_path, device="cpu"), ["identity"], [path])
    assert list(methods) == ["identity", "candidate@0.2"]
    image = synthetic_slice(10)
    assert np.array_equal(methods["identity"](image, 0.0), image)
    out = methods["candidate@0.2"](image, 0.0)
    padding = image < -1024
    assert out.shape == image.shape and np.array_equal(out[padding], image[padding])


def test_cli_help_lists_the_options() -> None:
    from lab.cli import app

    output = CliRunner().invoke(app, ["evaluate-ct", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--data-dir", "--split", "--preset", "--card", "--levels", "--phantoms",
                   "--bias-draws", "--max-slices-per-collection", "--seed", "--output",
                   "--bar-method"):  # fmt: skip
        assert option in output


def test_memoised_baselines_return_the_first_run_and_its_timing(tmp_path: Path) -> None:
    calls: list[float] = []

    def slow(image: np.ndarray, sigma: float) -> np.ndarray:
        calls.append(sigma)
        return image + 1.0

    memo = Memoised("slow", slow, tmp_path)
    image = np.zeros((8, 8), dtype=np.float32)
    first, seconds = memo.run(image, 3.0)
    again, seconds_again = memo.run(image, 3.0)
    assert calls == [3.0] and seconds_again == seconds
    np.testing.assert_array_equal(first, again)
    memo.run(image + 1, 3.0)
    memo.run(image, 4.0)
    assert calls == [3.0, 3.0, 4.0]  # another input or σ is computed anew
