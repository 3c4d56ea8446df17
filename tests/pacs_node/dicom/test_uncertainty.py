"""The uncertainty map as a secondary derived series: labels, values and its own UIDs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from pacs_node.dicom.derived import build_derived_series
from pacs_node.dicom.uncertainty import UNCERTAINTY_CODE, build_uncertainty_series
from tests.helpers.dicom_checks import dciodvfy_errors, philips_slices, require_dciodvfy
from tests.helpers.synthetic import make_ct_series
from tests.pacs_node.dicom.test_derived import make_info

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _round_trip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(DicomBytesIO(buffer.getvalue()))


def test_the_map_stores_the_spread_at_a_tenth_of_a_unit_and_is_labelled_as_a_map() -> None:
    sources = make_ct_series(None, n_slices=2, rows=16, cols=20, pixel_padding_value=-2000)
    spread = np.random.default_rng(1).uniform(0.0, 30.0, (2, 16, 20))
    info = make_info()
    enhanced = build_derived_series(sources, np.zeros((2, 16, 20)), info, NOW)
    maps = build_uncertainty_series(sources, spread, info, NOW, 4, 1004,
                                    str(enhanced[0].SeriesInstanceUID))  # fmt: skip
    assert len(maps) == 2
    for ds, expected, source in zip(maps, spread, sources, strict=True):
        ds = _round_trip(ds)
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(values, expected, atol=0.05 + 1e-9)
        assert ds.PixelRepresentation == 0 and "PixelPaddingValue" not in ds
        assert ds.SeriesInstanceUID != enhanced[0].SeriesInstanceUID
        assert ds.SeriesNumber == 1004
        assert ds.SeriesDescription.endswith("[ct-denoise uncertainty]")
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.ImagePositionPatient == source.ImagePositionPatient
        code = ds.DerivationCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == UNCERTAINTY_CODE
        assert str(enhanced[0].SeriesInstanceUID) in ds.DerivationDescription
        assert "across 4 samples" in ds.DerivationDescription
        # A window over the map's own values (not the source's soft-tissue window).
        assert 25.0 <= float(ds.WindowWidth) <= 30.0
        assert float(ds.WindowCenter) == pytest.approx(float(ds.WindowWidth) / 2)
    # Deterministic: the same inputs give the same UIDs, as for the enhanced series; another
    # sample count gives others.
    again = build_uncertainty_series(sources, spread, info, NOW, 4, 1004, "1.2.3")
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in maps]
    other = build_uncertainty_series(sources, spread, info, NOW, 5, 1004, "1.2.3")
    assert other[0].SeriesInstanceUID != maps[0].SeriesInstanceUID


def test_a_preset_name_of_64_characters_gives_the_map_its_own_uids() -> None:
    sources = make_ct_series(None, n_slices=1, rows=8, cols=8)
    info = make_info(preset="p" * 64)
    [enhanced] = build_derived_series(sources, np.zeros((1, 8, 8)), info, NOW)
    [ds] = build_uncertainty_series(sources, np.ones((1, 8, 8)), info, NOW, 2, 1004, "1.2")
    assert ds.SeriesInstanceUID != enhanced.SeriesInstanceUID


@pytest.mark.parametrize("bad", [-0.5, np.nan, np.inf])
def test_a_spread_that_is_no_spread_is_refused(bad: float) -> None:
    sources = make_ct_series(None, n_slices=1, rows=8, cols=8)
    spread = np.ones((1, 8, 8))
    spread[0, 2, 2] = bad
    with pytest.raises(ValueError, match="finite and non-negative"):
        build_uncertainty_series(sources, spread, make_info(), NOW, 2, 1004, "1.2.3")


def test_a_map_of_zeros_still_has_a_window() -> None:
    sources = make_ct_series(None, n_slices=1, rows=8, cols=8)
    [ds] = build_uncertainty_series(sources, np.zeros((1, 8, 8)), make_info(), NOW, 2, 1004,
                                    "1.2.3")  # fmt: skip
    assert float(ds.WindowWidth) == 1.0 and not _round_trip(ds).pixel_array.any()


def test_the_map_of_a_real_ct_slice_adds_no_dciodvfy_error(tmp_path: Path) -> None:
    require_dciodvfy()
    [path] = philips_slices(tmp_path / "study", 1)
    sources = [pydicom.dcmread(path)]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    spread = np.random.default_rng(2).uniform(0.0, 12.0, (1, rows, cols))
    info = make_info()
    [ds] = build_uncertainty_series(sources, spread, info, NOW, 2, 1004, "1.2.3.4")
    out = tmp_path / "map.dcm"
    ds.save_as(out, enforce_file_format=True)
    assert set(dciodvfy_errors(out)) <= set(dciodvfy_errors(path))
