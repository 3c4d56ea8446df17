"""A data directory on a small tmpfs filled past the admission watermark, then to the last
byte: instances are refused with 0xA700 / 507 and nothing is half-written; once space
returns the node accepts and processes series again, with no restart."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pacs_node.api.multipart import build_related
from pacs_node.errors import StorageError
from pacs_node.storage import InstanceStore
from tests.helpers.synthetic import make_ct_series
from tests.integration.node import NodeProcess
from tests.integration.peers import CaptureSCP, storescu

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
]

SIZE_MIB = 24


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SIZE_MIB mounted for the test (needs root, as CI runs)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill_to(disk: Path, ballast: Path, used_fraction: float | None) -> None:
    """Grow ``ballast`` until ``used_fraction`` of the disk is used (None: every byte)."""
    usage = shutil.disk_usage(disk)
    current = ballast.stat().st_size if ballast.exists() else 0
    wanted = usage.free if used_fraction is None else used_fraction * usage.total - usage.used
    with open(ballast, "ab") as handle:
        chunk = b"\0" * (1 << 16)
        remaining = int(wanted)
        try:
            while remaining > 0:
                remaining -= handle.write(chunk[: min(len(chunk), remaining)])
                handle.flush()
        except OSError:  # ENOSPC: the disk is full, as asked
            pass
    assert ballast.stat().st_size >= current


def _received(disk: Path) -> list[Path]:
    return sorted((disk / "received").rglob("*")) if (disk / "received").exists() else []


def test_a_full_data_disk_refuses_new_instances_and_recovers_when_space_returns(
    tmp_path: Path, small_disk: Path
) -> None:
    make_ct_series(tmp_path / "a", n_slices=3, rows=64, cols=64, series_number=3)
    second = make_ct_series(tmp_path / "b", n_slices=3, rows=64, cols=64, series_number=4)
    ballast = small_disk / "ballast"
    with (
        CaptureSCP("PACS") as pacs,
        NodeProcess(
            small_disk, preset="identity", destination=f"PACS@127.0.0.1:{pacs.port}",
            # The job database and broker sit on another disk, as PostgreSQL and Redis do.
            database_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}",
            broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
            admission__max_used_percent="60", admission__min_free_gib="0",
        ) as node,
    ):  # fmt: skip
        assert storescu(tmp_path / "a", node.port, "ENHANCE", scan_dir=True).returncode == 0
        node.wait_until_finished(1)
        kept = _received(small_disk)

        # Past the watermark: every instance refused with 0xA700 (storescu exits with the
        # status' high byte), STOW-RS answers 507, and nothing new is on the disk.
        _fill_to(small_disk, ballast, 0.75)
        result = storescu(tmp_path / "b", node.port, "ENHANCE", scan_dir=True)
        assert result.returncode == 0xA7, result.stderr
        body, content_type = build_related(
            [(Path(str(second[0].filename)).read_bytes(), "application/dicom")],
            "application/dicom",
        )
        sender = {"Authorization": f"Bearer {node.token('pacs', 'dicomweb-write')}"}
        stow = httpx.post(
            f"http://127.0.0.1:{node.http_port}/dicom-web/studies",
            content=b"".join(body), headers={"Content-Type": content_type, **sender},
            timeout=30,
        )  # fmt: skip
        assert stow.status_code == 507 and "watermark" in stow.json()["detail"]
        assert _received(small_disk) == kept
        assert len(node.jobs()) == 1

        # Full to the last byte (as if the watermark were off): a write fails whole, and
        # leaves neither the file nor its temporary part.
        _fill_to(small_disk, ballast, None)
        store = InstanceStore(small_disk)
        target = store.received_path("1.2.3.4.5")
        with pytest.raises(StorageError, match="No space left"):
            store.write_atomic(target, os.urandom(1 << 20))
        assert not target.exists() and not list(target.parent.glob(".tmp-*"))

        # Space returns: the same series is accepted and processed, with no restart.
        ballast.unlink()
        assert storescu(tmp_path / "b", node.port, "ENHANCE", scan_dir=True).returncode == 0
        jobs = node.wait_until_finished(2)
        assert [j["status"] for j in jobs] == ["DONE", "DONE"]
        pacs.wait_for(6, timeout_s=30)
        assert node.running
        node.assert_invariants()
