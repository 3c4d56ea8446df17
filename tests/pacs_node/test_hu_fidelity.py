"""HU fidelity on real GE slices: padding (-3024, -2048) and values beyond the network's
range come back exactly as sent, through the worker's code path (`enhance_folder`)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_rescale

from pacs_node.offline import enhance_folder
from pacs_node.settings import Settings

ARCHIVE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct_tcga_slices.tar.xz"
# GE slices with padding outside the scan field: PixelPaddingValue -2000 (-3024 HU), and
# 63536 in an unsigned VR on signed pixels (-2048 HU); the last reaches 3071 HU in bone.
FILES = ("ID_0008_AGE_0051_CT.dcm", "ID_0022_AGE_0074_CT.dcm", "ID_0029_AGE_0078_CT.dcm")


@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"shared data not found at {ARCHIVE}")
@pytest.mark.parametrize("name", FILES)
def test_padding_and_out_of_range_pixels_are_unchanged(tmp_path: Path, name: str) -> None:
    source_dir = tmp_path / "in"
    source_dir.mkdir()
    with tarfile.open(ARCHIVE) as archive:
        member = archive.getmember(f"ct_tcga_slices/{name}")
        handle = archive.extractfile(member)
        assert handle is not None
        (source_dir / name).write_bytes(handle.read())
    source = pydicom.dcmread(source_dir / name)
    source_hu = apply_rescale(source.pixel_array, source)
    outside = (source_hu < -1024) | (source_hu > 3071)
    assert outside.sum() > 1000  # the file really carries such values

    (outcome,) = enhance_folder(Settings(data_dir=tmp_path / "var"), source_dir,
                                tmp_path / "out", "ct-denoise")  # fmt: skip
    assert outcome.status == "DONE", outcome.message
    assert outcome.output_dir is not None
    (derived_path,) = sorted(outcome.output_dir.glob("*.dcm"))
    derived = pydicom.dcmread(derived_path)
    derived_hu = apply_rescale(derived.pixel_array, derived)
    np.testing.assert_array_equal(derived_hu[outside], source_hu[outside])
    inside = derived_hu[~outside]
    assert inside.min() >= -1024 and inside.max() <= 3071
    assert not np.array_equal(inside, source_hu[~outside])  # tissue was enhanced
