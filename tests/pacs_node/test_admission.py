"""Disk admission: the watermark is read from the real disk on every check."""

from __future__ import annotations

import shutil
from pathlib import Path

from pacs_node.admission import GIB, DiskGuard
from pacs_node.settings import Settings


def test_each_limit_refuses_on_its_own_and_the_defaults_are_documented(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    used = 100.0 * (usage.total - usage.free) / usage.total
    assert DiskGuard(tmp_path, 100.0, 0.0).refusal() is None
    by_percent = DiskGuard(tmp_path, used / 2, 0.0).refusal()
    assert by_percent is not None and "% used" in by_percent
    by_space = DiskGuard(tmp_path, 100.0, (usage.free + GIB) / GIB).refusal()
    assert by_space is not None and "GiB free" in by_space
    settings = Settings(data_dir=tmp_path)
    assert (settings.admission.max_used_percent, settings.admission.min_free_gib) == (90.0, 5.0)


def test_a_disk_that_cannot_be_measured_counts_as_full(tmp_path: Path) -> None:
    refusal = DiskGuard(tmp_path / "missing", 100.0, 0.0).refusal()
    assert refusal is not None and "cannot be measured" in refusal
