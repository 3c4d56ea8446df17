"""Tests of the numerical CT phantoms: exact truth, uniform ROIs, determinism, variants."""

from __future__ import annotations

import numpy as np
import pytest

from models.phantoms import (
    HELD_OUT_SPECS,
    PHANTOM_CONTRASTS_HU,
    PHANTOM_DIAMETERS_MM,
    VALIDATION_SPECS,
    Phantom,
    held_out_phantoms,
    low_contrast_phantom,
    validation_phantoms,
)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return low_contrast_phantom(seed=7)


@pytest.fixture(scope="module")
def held_out() -> list[Phantom]:
    return held_out_phantoms()


def test_image_is_float32_hu_with_air_and_inserts(phantom: Phantom) -> None:
    assert phantom.image.dtype == np.float32
    assert phantom.image.shape == (512, 512)
    assert phantom.image[0, 0] == -1000.0
    assert np.all(phantom.image[~phantom.body_mask] == -1000.0)
    names = {insert.name: insert.hu for insert in phantom.inserts}
    assert names == {
        "cortical_bone": 1000.0,
        "trabecular_bone": 700.0,
        "fat": -100.0,
        "lung": -800.0,
    }
    for insert in phantom.inserts:
        assert np.all(phantom.image[insert.roi] == insert.hu)


def test_masks_lie_inside_the_body(phantom: Phantom) -> None:
    masks = [*phantom.uniform_rois, *(i.roi for i in phantom.inserts)]
    masks += [m for d in phantom.disks for m in (d.mask, d.background_mask)]
    for mask in masks:
        assert mask.dtype == bool and mask.shape == phantom.image.shape
        assert mask.any()
        assert not np.any(mask & ~phantom.body_mask)


def test_disks_cover_every_contrast_and_diameter_exactly(phantom: Phantom) -> None:
    pairs = {(d.contrast_hu, d.diameter_mm) for d in phantom.disks}
    assert pairs == {(c, dia) for c in PHANTOM_CONTRASTS_HU for dia in PHANTOM_DIAMETERS_MM}
    image = phantom.image.astype(np.float64)
    for disk in phantom.disks:
        measured = image[disk.mask].mean() - image[disk.background_mask].mean()
        assert measured == disk.contrast_hu
        assert not np.any(disk.mask & disk.background_mask)
        # Pixel area close to the nominal area (rasterised circle).
        area = disk.mask.sum() * phantom.pixel_spacing_mm**2
        assert area == pytest.approx(np.pi * disk.diameter_mm**2 / 4, rel=0.25)


def test_uniform_rois_are_uniform_and_texture_is_not(phantom: Phantom) -> None:
    for roi in phantom.uniform_rois:
        assert roi.sum() > 50
        assert np.all(phantom.image[roi] == phantom.background_hu)
    # Outside the module and the inserts the soft tissue varies smoothly.
    soft = phantom.body_mask & (np.abs(phantom.image - phantom.background_hu) < 60)
    assert len(np.unique(phantom.image[soft])) > 1000
    flat = low_contrast_phantom(seed=7, texture_hu=0.0)
    assert len(np.unique(flat.image)) < 20


def test_deterministic_by_seed(phantom: Phantom) -> None:
    again = low_contrast_phantom(seed=7)
    assert np.array_equal(again.image, phantom.image)
    assert all(
        np.array_equal(a.mask, b.mask) for a, b in zip(again.disks, phantom.disks, strict=True)
    )
    other = low_contrast_phantom(seed=8)
    assert not np.array_equal(other.image, phantom.image)


def test_held_out_variants_differ(held_out: list[Phantom]) -> None:
    assert len(held_out) >= 4
    assert len({p.name for p in held_out}) == len(held_out)
    assert len({(p.image.shape, p.pixel_spacing_mm) for p in held_out}) == len(held_out)
    for p in held_out:
        for disk in p.disks:
            values = p.image.astype(np.float64)
            contrast = values[disk.mask].mean() - values[disk.background_mask].mean()
            assert contrast == disk.contrast_hu


def test_too_small_field_of_view_raises() -> None:
    with pytest.raises(ValueError, match="field of view"):
        low_contrast_phantom(size=128, pixel_spacing_mm=0.7)


def test_validation_phantoms_are_neither_test_nor_training_phantoms(
    held_out: list[Phantom],
) -> None:
    validation = validation_phantoms()
    assert len(validation) >= 3
    seeds = {spec[2] for spec in VALIDATION_SPECS}
    assert seeds.isdisjoint(spec[2] for spec in HELD_OUT_SPECS)
    for phantom in validation:
        for other in held_out:
            assert phantom.name != other.name
            if phantom.image.shape == other.image.shape:
                assert not np.array_equal(phantom.image, other.image)
