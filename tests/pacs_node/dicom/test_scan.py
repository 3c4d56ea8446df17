"""Grouping a folder's DICOM files by series."""

from __future__ import annotations

from pathlib import Path

from pacs_node.dicom.scan import scan_series
from tests.helpers.synthetic import make_ct_series


def test_files_are_grouped_by_series_and_non_dicom_is_skipped(tmp_path: Path) -> None:
    a = make_ct_series(tmp_path / "x", n_slices=3, rows=16, cols=16)
    b = make_ct_series(tmp_path / "x" / "deeper", n_slices=2, rows=16, cols=16)
    (tmp_path / "x" / "LICENSE").write_text("not DICOM")
    found = scan_series(tmp_path)
    assert set(found) == {str(a[0].SeriesInstanceUID), str(b[0].SeriesInstanceUID)}
    files = found[str(a[0].SeriesInstanceUID)]
    assert len(files.paths) == len(files.headers) == 3
    assert "PixelData" not in files.headers[0]
