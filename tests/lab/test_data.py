"""The CT manifest: split by patient, reproducible from the archives, checked on load."""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import pytest

from lab.data import (
    MANIFEST,
    TEST_SCANNERS,
    build_manifest,
    kernel_class,
    load_slices,
    read_manifest,
    select,
    vendor,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "ct_tcga_slices.tar.xz").is_file(), reason=f"shared data not found at {DATA}"
)


def test_every_patient_is_in_one_split_only() -> None:
    splits: dict[tuple[str, str], set[str]] = defaultdict(set)
    for entry in read_manifest():
        splits[(entry.collection, entry.patient)].add(entry.split)
    assert all(len(found) == 1 for found in splits.values()), splits


def test_held_out_scanners_and_the_pancreas_patient_are_test_only() -> None:
    entries = read_manifest()
    assert {e.split for e in entries if e.scanner in TEST_SCANNERS} == {"test"}
    assert {e.split for e in entries if e.collection == "pancreas"} == {"test"}
    train = select(entries, "train")
    assert not any(e.low_dose for e in train)
    assert not any(e.duplicate_of for e in train)
    test = select(entries, "test", low_dose=None)
    assert {e.group for e in test} >= {"GE smooth", "GE sharp", "Siemens smooth",
                                       "Siemens sharp", "Philips smooth"}  # fmt: skip
    assert any(e.low_dose for e in test)


def test_vendor_and_kernel_groups() -> None:
    assert vendor("GE MEDICAL SYSTEMS") == "GE"
    assert vendor("SIEMENS") == "Siemens"
    assert [
        kernel_class(k)
        for k in ("B20f", "B60f", "59 .10.AB50", "SOFT", "BONE", "LUNG", "STANDARD", "B")
    ] == ["smooth", "sharp", "sharp", "smooth", "sharp", "sharp", "smooth", "smooth"]


@needs_data
def test_the_committed_manifest_is_what_the_archives_give() -> None:
    built = [dataclasses.asdict(e) for e in build_manifest(DATA)]
    committed = json.loads(MANIFEST.read_text())["slices"]
    key = lambda row: (row["collection"], row["member"])  # noqa: E731
    assert sorted(built, key=key) == sorted(committed, key=key)


@needs_data
def test_loading_checks_every_files_checksum() -> None:
    entry = next(e for e in read_manifest() if e.member.endswith("ID_0008_AGE_0051_CT.dcm"))
    (good,) = load_slices([entry], DATA)
    assert good.hu.shape == (512, 512)
    assert good.padding_hu == -3024.0  # GE PixelPaddingValue -2000, intercept -1024
    assert good.hu.min() == -3024.0
    tampered = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(ValueError, match="differ from the manifest"):
        load_slices([tampered], DATA)
