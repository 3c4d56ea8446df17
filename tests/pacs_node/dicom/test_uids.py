"""Tests of the deterministic derived UIDs."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from pacs_node.dicom.uids import derived_series_uid, derived_sop_uid, device_uid

SERIES = "1.2.840.113619.2.55.3.1234.5678"
SOP = "1.2.840.113619.2.55.3.1234.5678.9"


SOPS = [SOP, SOP + "0", SOP + "1"]
SHA = "a" * 64
RUN = (SERIES, SOPS, "ct-denoise", "1", "1.0.0", SHA)


@pytest.mark.parametrize(
    "uid",
    [
        derived_series_uid(*RUN),
        derived_sop_uid(derived_series_uid(*RUN), SOP),
        device_uid("unet", "1.0.0", SHA),
    ],
)
def test_uids_are_valid_2_25_uids(uid: UID) -> None:
    assert isinstance(uid, UID)
    assert uid.is_valid
    assert uid.startswith("2.25.")
    assert len(uid) <= 64
    # The 2.25 arc holds the integer value of a 128-bit UUID (PS3.5 B.2).
    assert int(uid.removeprefix("2.25.")) < 2**128


def test_a_rerun_of_the_same_inputs_preset_strength_and_weights_reuses_the_uids() -> None:
    assert derived_series_uid(*RUN) == derived_series_uid(*RUN)
    # No variant is the UID of series made before variants existed.
    assert derived_series_uid(*RUN, "") == derived_series_uid(*RUN)
    # The order the instances arrived in does not matter.
    assert derived_series_uid(SERIES, SOPS[::-1], *RUN[2:]) == derived_series_uid(*RUN)
    series = derived_series_uid(*RUN)
    assert derived_sop_uid(series, SOP) == derived_sop_uid(series, SOP)
    assert device_uid("m", "1", "ab") == device_uid("m", "1", "ab")


@pytest.mark.parametrize(
    "changed",
    [
        (SERIES + ".1", SOPS, "ct-denoise", "1", "1.0.0", SHA),  # another source series
        (SERIES, SOPS[:2], "ct-denoise", "1", "1.0.0", SHA),  # fewer inputs
        (SERIES, SOPS, "ct-denoise-fast", "1", "1.0.0", SHA),  # another preset
        (SERIES, SOPS, "ct-denoise", "0.5", "1.0.0", SHA),  # another strength
        (SERIES, SOPS, "ct-denoise", "1", "1.0.1", SHA),  # another version
        (SERIES, SOPS, "ct-denoise", "1", "1.0.0", "b" * 64),  # other weights
        (SERIES, SOPS, "ct-denois", "e1", "1.0.0", SHA),  # no collision by concatenation
        (*RUN, "steps=1/10"),  # the same weights sampled in fewer steps
        (*RUN, "uncertainty-map;samples=3"),  # the uncertainty map of the run
    ],
)
def test_anything_else_gives_other_series_and_instance_uids(changed: tuple) -> None:
    assert derived_series_uid(*changed) != derived_series_uid(*RUN)
    assert derived_sop_uid(derived_series_uid(*changed), SOP) != derived_sop_uid(
        derived_series_uid(*RUN), SOP
    )


def test_instances_of_one_series_get_distinct_uids() -> None:
    series = derived_series_uid(*RUN)
    assert len({derived_sop_uid(series, sop) for sop in SOPS}) == len(SOPS)


@pytest.mark.parametrize(
    "changed",
    [("unet2", "1", "ab"), ("unet", "2", "ab"), ("unet", "1", "ac")],
)
def test_any_change_gives_another_device_uid(changed: tuple[str, str, str]) -> None:
    assert device_uid("unet", "1", "ab") != device_uid(*changed)


def test_kinds_do_not_collide() -> None:
    # The same strings used as a series, an instance or a device give different UIDs.
    uids = {
        derived_sop_uid("x", "y"),
        device_uid("x", "y", "z"),
        derived_series_uid("x", [], "y", "z", "w", "v"),
    }
    assert len(uids) == 3


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(TypeError, match="must be str"):
        derived_series_uid(SERIES, SOPS, "p", 1, "1", SHA)  # type: ignore[arg-type]
