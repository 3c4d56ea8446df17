"""Tests of the deterministic derived UIDs."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from pacs_node.dicom.uids import derived_series_uid, derived_sop_uid, device_uid

SERIES = "1.2.840.113619.2.55.3.1234.5678"
SOP = "1.2.840.113619.2.55.3.1234.5678.9"


@pytest.mark.parametrize(
    "uid",
    [
        derived_series_uid(SERIES, "ct-denoise", "1.0.0"),
        derived_sop_uid(SOP, "ct-denoise", "1.0.0"),
        device_uid("unet", "1.0.0", "a" * 64),
    ],
)
def test_uids_are_valid_2_25_uids(uid: UID) -> None:
    assert isinstance(uid, UID)
    assert uid.is_valid
    assert uid.startswith("2.25.")
    assert len(uid) <= 64
    # The 2.25 arc holds the integer value of a 128-bit UUID (PS3.5 B.2).
    assert int(uid.removeprefix("2.25.")) < 2**128


def test_same_inputs_give_same_uid() -> None:
    assert derived_series_uid(SERIES, "p", "1") == derived_series_uid(SERIES, "p", "1")
    assert derived_sop_uid(SOP, "p", "1") == derived_sop_uid(SOP, "p", "1")
    assert device_uid("m", "1", "ab") == device_uid("m", "1", "ab")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((SERIES, "p", "1"), (SERIES + ".1", "p", "1")),
        ((SERIES, "p", "1"), (SERIES, "q", "1")),
        ((SERIES, "p", "1"), (SERIES, "p", "2")),
        # Boundaries between parts matter: no collision by concatenation.
        ((SERIES, "ab", "c"), (SERIES, "a", "bc")),
    ],
)
def test_any_change_gives_another_series_uid(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    assert derived_series_uid(*a) != derived_series_uid(*b)
    assert derived_sop_uid(*a) != derived_sop_uid(*b)


@pytest.mark.parametrize(
    "changed",
    [("unet2", "1", "ab"), ("unet", "2", "ab"), ("unet", "1", "ac")],
)
def test_any_change_gives_another_device_uid(changed: tuple[str, str, str]) -> None:
    assert device_uid("unet", "1", "ab") != device_uid(*changed)


def test_kinds_do_not_collide() -> None:
    # The same strings used as a series, an instance or a device give different UIDs.
    uids = {
        derived_series_uid("x", "y", "z"),
        derived_sop_uid("x", "y", "z"),
        device_uid("x", "y", "z"),
    }
    assert len(uids) == 3


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(TypeError, match="must be str"):
        derived_series_uid(SERIES, "p", 1)  # type: ignore[arg-type]
