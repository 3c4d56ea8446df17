"""The door's decoding check (:func:`pacs_node.ingest.decoding_problem`): every element of
a received data set, sequences' items included, must decode, as ``Dataset.walk`` (which
decodes each element through the dataset) would find. It refuses what ``walk`` refuses on
damaged real files and leaves the values a later read sees unchanged."""

from __future__ import annotations

import io
import os
import random
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom import config
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from pacs_node import ingest
from pacs_node.ingest import decoding_problem
from tests.helpers.synthetic import make_ct_series

# Real files with nested sequences, private elements, implicit and explicit VR.
SOURCES = ("rtplan.dcm", "CT_small.dcm", "MR_small_implicit.dcm", "nested_priv_SQ.dcm",
           "rtstruct.dcm", "UN_sequence.dcm", "empty_charset_LEI.dcm")  # fmt: skip
EXAMPLES = int(os.environ.get("PACS_NODE_FUZZ_EXAMPLES", "40")) * 15


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


def _walk_problem(ds: Dataset) -> str | None:
    try:
        ds.walk(lambda _ds, _elem: None)
    except Exception as exc:  # noqa: BLE001 - the reference: any failure counts
        return str(exc)
    return None


def _values(ds: Dataset) -> list[tuple[str, str, str]]:
    """Every element as a later read sees it (tag, VR, value), sequences' items included."""
    return [(str(e.tag), str(e.VR), repr(e.value)) for e in ds.iterall() if e.VR != "SQ"]


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# In Stack Position Number (0020,9057), UL: 4 bytes. Relabelled FD in the encoded file, its
# 4 bytes are not a whole 8-byte value, which pydicom cannot decode.
IN_STACK = b"\x20\x00\x57\x90"


def _relabelled(ds: Dataset) -> bytes:
    data = _encoded(ds)
    assert data.count(IN_STACK + b"UL") == 1
    return data.replace(IN_STACK + b"UL", IN_STACK + b"FD")


def test_a_value_that_cannot_be_decoded_is_named_with_its_tag() -> None:
    [ds] = make_ct_series(None, n_slices=1, rows=16, cols=16)
    ds.InStackPositionNumber = 3
    assert decoding_problem(_read(_encoded(ds))) is None
    problem = decoding_problem(_read(_relabelled(ds)))
    assert problem is not None and "(0020,9057)" in problem, problem
    assert _walk_problem(_read(_relabelled(ds))) is not None


def test_a_value_that_cannot_be_decoded_inside_a_sequence_item_is_found() -> None:
    [ds] = make_ct_series(None, n_slices=1, rows=16, cols=16)
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.InStackPositionNumber = 3
    ds.ReferencedImageSequence = Sequence([item])
    assert decoding_problem(_read(_encoded(ds))) is None
    problem = decoding_problem(_read(_relabelled(ds)))
    assert problem is not None and "(0020,9057)" in problem, problem


def test_elements_decoded_before_are_not_decoded_again_and_damage_still_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest, "_DECODED", set())
    [ds] = make_ct_series(None, n_slices=1, rows=16, cols=16)
    ds.InStackPositionNumber = 3
    assert decoding_problem(_read(_encoded(ds))) is None
    remembered = len(ingest._DECODED)
    assert remembered > 10  # the plain public elements, pixel data and private ones aside
    again = _read(_encoded(ds))
    assert decoding_problem(again) is None
    assert len(ingest._DECODED) == remembered
    assert isinstance(again._dict[Tag(0x00209057)], RawDataElement)  # left as read
    assert again.InStackPositionNumber == 3  # and read as before
    # The same element damaged is other bytes under another VR: decoded, and refused.
    problem = decoding_problem(_read(_relabelled(ds)))
    assert problem is not None and "(0020,9057)" in problem, problem


def test_what_was_remembered_is_decoded_again_under_other_pydicom_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest, "_DECODED", set())
    [ds] = make_ct_series(None, n_slices=1, rows=16, cols=16)
    ds.SliceThickness = "7.125"
    data = _encoded(ds).replace(b"7.125 ", b"7.1z5 ")  # not a number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert decoding_problem(_read(data)) is None  # pydicom's default: a warning only
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    problem = decoding_problem(_read(data))  # remembered under the old setting only
    assert problem is not None and "(0018,0050)" in problem, problem


def test_the_memory_of_decoded_elements_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "_DECODED", set())
    monkeypatch.setattr(ingest, "DECODED_REMEMBERED", 40)
    for ds in make_ct_series(None, n_slices=6, rows=16, cols=16):
        assert decoding_problem(_read(_encoded(ds))) is None
        assert len(ingest._DECODED) <= 40


@pytest.mark.parametrize("name", SOURCES)
def test_real_files_pass_and_read_the_same_afterwards(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None
    data = Path(path).read_bytes()
    checked, walked = _read(data), _read(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some test files carry values pydicom warns about
        assert decoding_problem(checked) is None
        assert _walk_problem(walked) is None
        assert _values(checked) == _values(walked)


def _damaged(rng: random.Random) -> bytes:
    """A real file with bytes of its data set overwritten, cut or inserted."""
    path = get_testdata_file(rng.choice(SOURCES))
    assert path is not None
    data = bytearray(Path(path).read_bytes())
    start = min(300, len(data) // 2)  # mostly past the preamble and file meta
    for _ in range(rng.randint(1, 3)):
        where = rng.randrange(start, len(data))
        kind = rng.choice(["flip", "cut", "insert"])
        if kind == "flip":
            size = rng.randint(1, 6)
            data[where : where + size] = rng.randbytes(size)
        elif kind == "cut":
            del data[where : where + rng.randint(1, 64)]
        else:
            data[where:where] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


def test_refuses_exactly_what_walking_the_dataset_refuses() -> None:
    rng = random.Random(19)  # fixed: a failure reproduces
    outcomes: Counter[str] = Counter()
    for _ in range(EXAMPLES):
        data = _damaged(rng)
        try:
            checked, walked = _read(data), _read(data)
        except Exception:  # noqa: BLE001 - not readable at all: refused before this check
            outcomes["unreadable"] += 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problem, reference = decoding_problem(checked), _walk_problem(walked)
        assert (problem is None) == (reference is None), (problem, reference)
        if problem is None:
            assert _values(checked) == _values(walked)
        outcomes["passed" if problem is None else "refused"] += 1
    # Both outcomes were exercised.
    assert outcomes["passed"] > EXAMPLES // 10 and outcomes["refused"] > EXAMPLES // 50, outcomes
