"""lab/sr.py: degradations, the halo measure, training pairs, the linear baseline, a short
training run and the evaluation report, on small synthetic slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lab.data import CtSlice, SliceEntry
from lab.sr import (
    FAMILIES,
    Degradation,
    PatchPairs,
    SrTrainConfig,
    degrade,
    evaluate,
    fit_linear_filter,
    halo_hu,
    input_range_excess_hu,
    methods,
    native_halo,
    prepare,
    random_degradation,
    summarise,
    train_sr,
    write_report,
)
from models.checkpoint import load_checkpoint


def _phantom(size: int = 64, seed: int = 0) -> np.ndarray:
    """A body (40 HU) in air with a bone disk (900 HU) and mild noise, HU."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - size / 2
    image = np.full((size, size), -1000.0, dtype=np.float32)
    image[x**2 + y**2 < (0.42 * size) ** 2] = 40.0
    image[(x - 6) ** 2 + (y + 4) ** 2 < (0.12 * size) ** 2] = 900.0
    return image + rng.normal(0, 3, image.shape).astype(np.float32)


def _slice(index: int, size: int = 64) -> CtSlice:
    entry = SliceEntry("tcga", f"{index:03d}.dcm", "", f"p{index}", "validation", "GE",
                       "LightSpeed", "STANDARD", 200.0, False, None)  # fmt: skip
    return CtSlice(_phantom(size, index), 0.7, entry, None)


def test_area_reduction_is_the_2x2_mean_and_noise_has_its_sigma() -> None:
    hr = torch.arange(16.0).reshape(1, 1, 4, 4)
    lr = degrade(hr, Degradation("area"), torch.Generator().manual_seed(0))
    assert torch.equal(lr, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    flat = torch.zeros(1, 1, 256, 256)
    noisy = degrade(flat, Degradation("area", noise_hu=10.0), torch.Generator().manual_seed(0))
    assert noisy.shape == (1, 1, 128, 128) and 9.5 < float(noisy.std()) < 10.5
    constant = torch.full((1, 1, 32, 32), 40.0)
    for family in FAMILIES.values():
        if family.noise_hu == 0:  # every kernel keeps a uniform region's value
            out = degrade(constant, family, torch.Generator().manual_seed(0))
            assert torch.allclose(out, torch.full_like(out, 40.0), atol=1e-3)
    with pytest.raises(ValueError, match="kernel"):
        Degradation("nearest")


def test_training_draws_cover_the_families_ranges() -> None:
    rng = np.random.default_rng(0)
    draws = [random_degradation(rng) for _ in range(300)]
    assert {d.kernel for d in draws} == {"area", "bicubic"}
    blurs = [d.blur_px for d in draws]
    assert min(blurs) == 0.0 and 1.1 < max(blurs) <= 1.2
    assert sum(d.noise_hu == 0 for d in draws) > 100 and max(d.noise_hu for d in draws) > 14


def test_halo_is_zero_inside_the_local_range_and_measures_a_rim() -> None:
    guide = np.full((40, 40), 40.0)
    guide[:, 20:] = 1000.0  # a bone edge
    assert halo_hu(guide, guide) == (0.0, 0.0)
    rim = guide.copy()
    rim[:, 18] = 40.0 - 60.0  # a dark rim just outside the bone
    mean, p99 = halo_hu(rim, guide)
    assert mean > 5.0 and p99 >= 59.0
    assert halo_hu(np.full((8, 8), 1.0), np.full((8, 8), 1.0)) == (0.0, 0.0)  # no edges


def test_patch_pairs_are_normalised_lr_hr_pairs_from_the_body() -> None:
    pairs = PatchPairs([_phantom(64, i) for i in range(3)], patch=16, seed=0)
    lr, hr = pairs.batch(8)
    assert lr.shape == (8, 1, 8, 8) and hr.shape == (8, 1, 16, 16)
    assert float(hr.min()) >= 0.0 and float(hr.max()) <= 1.0
    # Patch centres are in tissue, so no patch is all air.
    assert bool(((hr * 4096 - 1024) > -500).flatten(1).any(dim=1).all())
    assert prepare(np.full((5, 7), -3024.0)).shape == (4, 6)
    assert float(prepare(np.full((4, 4), -3024.0)).min()) == -1024.0


def test_linear_baseline_recovers_a_sharpening_filter() -> None:
    pairs = PatchPairs([_phantom(96, i) for i in range(4)], patch=32, seed=1)
    kernel = fit_linear_filter(pairs, batches=6)
    assert kernel.shape == (5, 5)
    assert abs(kernel.sum() - 1.0) < 0.02  # keeps the mean
    assert kernel[2, 2] > 1.0  # and sharpens


def test_a_short_training_run_improves_on_bicubic_and_reports(tmp_path: Path) -> None:
    slices = [_phantom(96, i) for i in range(6)]
    config = SrTrainConfig(features=8, num_blocks=2, clamp_window=3, steps=150,
                           batch_size=8, patch=32, learning_rate=3e-3)  # fmt: skip
    card_path = train_sr(
        slices, config, name="sr-test", version="0.0.1", command="test",
        data_note="synthetic", output=tmp_path / "card", log=lambda _: None,
    )  # fmt: skip
    _, card = load_checkpoint(card_path)
    assert card.task == "super_resolution" and card.arch_kwargs["clamp_window"] == 3
    assert card.training["config"]["steps"] == 150
    held_out = [_slice(i + 10, 96) for i in range(3)]
    upscalers = methods(card_path, _delta())
    assert set(upscalers) == {"bicubic", "linear filter", "sr-test", "sr-test (no clamp)"}
    families = {"area": FAMILIES["area"], "blur1.2+area": FAMILIES["blur1.2+area"]}
    rows = evaluate(held_out, upscalers, families)
    assert len(rows) == 3 * 2 * 4
    native = native_halo(held_out[:1], upscalers)
    summary = summarise(rows, native, "sr-test")
    by_family = summary["families"]["blur1.2+area"]
    # Trained on these shapes, the network beats bicubic on the blurred family.
    assert by_family["sr-test"]["psnr_full_db"] > by_family["bicubic"]["psnr_full_db"]
    gain = by_family["sr-test"]["gain_over_bicubic_psnr_full_db"]
    assert gain[1] <= gain[0] <= gain[2]
    # The clamp's guarantee: no value beyond the input's neighbourhood (up to the float
    # rounding of the HU <-> [0, 1] mapping), where bicubic overshoots beside the bone.
    excess = summary["native_input_range_excess_max_hu"]
    assert excess["sr-test"] < 1e-3 and excess["bicubic"] > 10.0
    assert summary["native_halo_vs_bicubic_hu"]["bicubic"] == 0.0
    report = write_report(tmp_path / "report", split="validation", command="test",
                          candidate="sr-test", rows=rows, native=native, summary=summary,
                          linear_kernel=_delta())  # fmt: skip
    text = report.read_text()
    assert "| blur1.2+area | sr-test |" in text and "Bar (≥ bicubic + 1 dB" in text
    document = json.loads((tmp_path / "report" / "sr-validation.json").read_text())
    assert document["summary"]["bar"]["halo_passes"] is True
    assert len(document["rows"]) == len(rows)


def _delta() -> np.ndarray:
    kernel = np.zeros((5, 5))
    kernel[2, 2] = 1.0
    return kernel


def test_the_bar_needs_one_db_in_every_family_counting_each_patient_once() -> None:
    rows = []
    # Patient "a" has 9 slices gaining 1.5 dB in "area", patient "b" 1 slice gaining 0.3:
    # per slice the mean would be 1.38 dB, per patient it is 0.9 dB, under the bar.
    slices = [("a", f"a{i}", 1.5) for i in range(9)] + [("b", "b0", 0.3)]
    for patient, name, gain in slices:
        for family, family_gain in (("area", gain), ("bicubic-aa", 2.0)):
            for method, value in (("bicubic", 30.0), ("cand", 30.0 + family_gain)):
                rows.append({"slice": name, "patient": patient, "group": "g",
                             "family": family, "method": method, "psnr_full_db": value,
                             "psnr_soft_db": value, "halo_vs_reference_hu": 0.5,
                             "halo_vs_reference_p99_hu": 2.0})  # fmt: skip
    native = [{"slice": "a0", "method": "cand", "halo_vs_bicubic_hu": 3.5,
               "halo_vs_bicubic_p99_hu": 9.0, "input_range_excess_max_hu": 0.0}]  # fmt: skip
    summary = summarise(rows, native, "cand")
    area = summary["families"]["area"]["cand"]
    assert (area["slices"], area["patients"]) == (10, 2)
    assert area["gain_over_bicubic_psnr_soft_db"][0] == pytest.approx(0.9)
    assert area["psnr_soft_db"] == pytest.approx(30.9)
    bar = summary["bar"]
    assert bar["gain_passes"] == {"area": False, "bicubic-aa": True}
    assert bar["halo_passes"] is False and bar["halo_native_hu"] == 3.5
    assert summarise(rows, [], "cand")["bar"]["halo_passes"] is None  # not measured


def test_a_delta_linear_filter_is_exactly_bicubic() -> None:
    lr = torch.from_numpy(_phantom(32))[None, None]
    upscalers = methods(None, _delta())
    assert torch.allclose(upscalers["linear filter"](lr), upscalers["bicubic"](lr), atol=1e-3)


def test_input_range_excess_is_zero_inside_and_measures_overshoot() -> None:
    image = np.zeros((8, 8), dtype=np.float32)
    image[:, 4:] = 1000.0
    inside = np.kron(image, np.ones((2, 2), dtype=np.float32))
    assert input_range_excess_hu(inside, image) == 0.0
    overshoot = inside.copy()
    overshoot[0, 0] = -40.0  # far from the edge: the neighbourhood holds only 0 HU
    assert input_range_excess_hu(overshoot, image) == 40.0
