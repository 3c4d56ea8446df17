"""Durable file storage for received and derived instances under the data directory."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from pacs_node.errors import StorageError

FOLDERS_REMEMBERED = 4096
# Batches of at least this many files are made durable by two syncfs calls instead of an
# fsync per file and per folder.
SYNCFS_BATCH = 4


def _syncfs() -> object | None:
    """Linux's syncfs(2) where it reports write-back errors (Linux 5.8 and later), or None
    (then every file is flushed on its own)."""
    try:
        release = tuple(int(part) for part in os.uname().release.split(".")[:2])
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, ValueError):
        return None
    if release < (5, 8):
        return None
    function.argtypes = [ctypes.c_int]
    return function


_SYNCFS = _syncfs()


def _fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` (files renamed or folders made in it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_folder(folder: Path, root: Path) -> None:
    """``mkdir -p`` whose folders survive a power loss: made where missing, then the
    entry of each folder from ``folder`` up to ``root`` is flushed in its parent, as a
    renamed file's folder is (a file flushed in a folder whose own entry was lost would be
    lost with it). Flushed even where the folder existed: another thread or process may
    have made it and not flushed it yet. Called once per folder a store sees."""
    missing = []
    probe = folder
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another thread
            made.mkdir()
    flushed = folder
    while True:
        _fsync_folder(flushed.parent)
        if flushed == root or flushed.parent == flushed or not flushed.is_relative_to(root):
            break
        flushed = flushed.parent


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()


class InstanceStore:
    """Files of the node, named by hashes: a received UID never becomes a path component.

    Layout: ``<root>/received/<aa>/<sha256(sop uid)>.dcm`` and
    ``<root>/derived/<sha256(series uid)>/<sha256(sop uid)>.dcm``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.received_dir = root / "received"
        self.derived_dir = root / "derived"
        self._folders: set[Path] = set()  # made or found already by this store

    def received_path(self, sop_instance_uid: str) -> Path:
        """Where a received instance with this SOP Instance UID is stored."""
        digest = _digest(sop_instance_uid)
        return self.received_dir / digest[:2] / f"{digest}.dcm"

    def derived_path(self, series_instance_uid: str, sop_instance_uid: str) -> Path:
        """Where a derived instance is stored."""
        return self.derived_dir / _digest(series_instance_uid) / f"{_digest(sop_instance_uid)}.dcm"

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Write ``data`` so that ``path`` holds either nothing or all of it, even after a crash.

        Temporary file in the same directory, fsync, atomic rename, fsync of the directory
        so the rename itself survives a power loss.
        """
        try:
            fd, tmp_name = self._temporary(path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp_name, path)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
            _fsync_folder(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def write_many(self, items: Sequence[tuple[Path, bytes]]) -> None:
        """Write each ``(path, data)`` as :meth:`write_atomic` does, made durable together.

        Every temporary file is written, the filesystem flushed once (syncfs), every file
        renamed into place, and the filesystem flushed again so the renames survive a power
        loss: two system calls for the batch instead of two per file. Small batches, or a
        system without syncfs (or older than Linux 5.8, whose syncfs does not report
        write-back errors), take :meth:`write_atomic` per file. All paths must lie under
        the store's root (one filesystem). On an error no
        temporary file is left; files already renamed stay (their callers do not record
        them, and remove them).
        """
        if len(items) < SYNCFS_BATCH or _SYNCFS is None:
            for path, data in items:
                self.write_atomic(path, data)
            return
        temporaries: list[str] = []
        try:
            # Opened before anything is written: syncfs reports a write-back error that
            # happened after this descriptor was opened, even if another caller saw it too.
            self.root.mkdir(parents=True, exist_ok=True)
            root = os.open(self.root, os.O_RDONLY)
            try:
                for path, data in items:
                    fd, name = self._temporary(path.parent)
                    temporaries.append(name)
                    with os.fdopen(fd, "wb") as handle:
                        handle.write(data)
                self._flush_filesystem(root)
                for (path, _), name in zip(items, temporaries, strict=True):
                    os.replace(name, path)
                self._flush_filesystem(root)
            finally:
                os.close(root)
                for name in temporaries:
                    Path(name).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write {len(items)} files: {exc.strerror or exc}") from exc

    @staticmethod
    def _flush_filesystem(fd: int) -> None:
        assert _SYNCFS is not None
        if _SYNCFS(fd) != 0:  # type: ignore[operator]
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    def _temporary(self, folder: Path) -> tuple[int, str]:
        """A new temporary file in ``folder``, made once if missing (folders this store has
        seen are not asked for again: a system call less per instance)."""
        if folder not in self._folders:
            _make_folder(folder, self.root)
            if len(self._folders) >= FOLDERS_REMEMBERED:  # one per derived series: bounded
                self._folders.clear()
            self._folders.add(folder)
        try:
            return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
        except FileNotFoundError:  # removed behind this store's back: make it again
            _make_folder(folder, self.root)
            return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")

    def write_dataset(self, path: Path, ds: Dataset) -> int:
        """Encode ``ds`` as a DICOM file (preamble, file meta) and write it atomically.

        Returns the number of bytes written.
        """
        buffer = DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        self.write_atomic(path, data)
        return len(data)
