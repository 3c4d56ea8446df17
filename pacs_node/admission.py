"""Disk admission control: no instance is accepted while the data directory's disk is past
its watermark, so a filling disk refuses new data cleanly (C-STORE 0xA700, STOW-RS 507)
instead of failing half-way through a write, and the node accepts again by itself once
space returns."""

from __future__ import annotations

import shutil
from pathlib import Path

GIB = 1024**3


def used_percent(total: int, free: int) -> float:
    """Used share of a file system of ``total`` bytes with ``free`` bytes free, in percent
    (one of no size counts as full)."""
    return 100.0 * (total - free) / total if total else 100.0


def disk_used_percent(path: Path) -> float:
    """Used share of the file system holding ``path``, in percent."""
    usage = shutil.disk_usage(path)
    return used_percent(usage.total, usage.free)


class DiskGuard:
    """Checks the free space of the disk holding ``path`` against a watermark.

    Parameters
    ----------
    path
        A folder on the disk to watch (the node's data directory).
    max_used_percent
        Refuse above this share of the disk in use.
    min_free_gib
        Refuse below this much free space (GiB).
    """

    def __init__(self, path: Path, max_used_percent: float, min_free_gib: float) -> None:
        self.path = path
        self.max_used_percent = max_used_percent
        self.min_free_bytes = int(min_free_gib * GIB)

    def refusal(self) -> str | None:
        """Why new data must be refused now, or None while there is room.

        A disk that cannot be measured counts as full: accepting data that may not fit
        would break the promise that an acknowledged instance is stored.
        """
        try:
            usage = shutil.disk_usage(self.path)
        except OSError as exc:
            return f"the data directory's disk cannot be measured: {exc.strerror or exc}"
        used = used_percent(usage.total, usage.free)
        if usage.free < self.min_free_bytes or used > self.max_used_percent:
            return (
                f"the data directory's disk is past its watermark ({used:.1f} % used, "
                f"{usage.free / GIB:.1f} GiB free; limits {self.max_used_percent:g} % and "
                f"{self.min_free_bytes / GIB:g} GiB): new instances are refused until space "
                "is freed"
            )
        return None
