"""Deterministic UIDs for derived series, instances and processing devices (2.25 root)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence

from pydicom.uid import UID

__all__ = ["derived_series_uid", "derived_sop_uid", "device_uid"]

# Fixed namespace of this node's name-based UUIDs. Changing it changes every UID the node
# has ever produced, so it is a constant, not a setting.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pacs-enhancement-node:uids")


def _uid_from_parts(kind: str, *parts: str) -> UID:
    """Return a ``2.25.<uuid>`` UID that depends on ``kind`` and ``parts`` only.

    pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores ``entropy_srcs`` and
    returns a random UUID (pydicom 3.0 source), and with a prefix it joins the sources
    without a separator (``["ab", "c"]`` and ``["a", "bc"]`` collide) and keeps 64 digits
    of a SHA-512 integer, which is not a UUID. So the UID is built from a name-based
    (version 5) UUID instead: the 2.25 root is defined for the integer value of a UUID
    (PS3.5 B.2, ISO/IEC 9834-8), and its decimal form has no leading zero and at most
    39 digits, so the UID stays within 64 characters (PS3.5 9.1).
    """
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"UID inputs must be str, got {type(part).__name__}: {part!r}")
    # JSON encoding of the list keeps the boundaries between parts unambiguous.
    name = json.dumps([kind, *parts], ensure_ascii=True)
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


def derived_series_uid(
    source_series_uid: str,
    source_sop_uids: Sequence[str],
    preset: str,
    strength: str,
    model_version: str,
    weights_sha256: str,
    variant: str = "",
) -> UID:
    """Return the SeriesInstanceUID of the derived series made from a source series.

    Parameters
    ----------
    source_series_uid : str
        SeriesInstanceUID (0020,000E) of the source series.
    source_sop_uids : sequence of str
        SOPInstanceUIDs of the instances the series was made from (order does not matter).
    preset : str
        Name of the enhancement preset.
    strength : str
        The share of the model's change applied, as text (e.g. ``"0.75"``).
    model_version, weights_sha256 : str
        Version and SHA-256 of the weights that produced the pixels.
    variant : str
        Anything else the pixels depend on (a diffusion preset's sampling steps, the
        uncertainty map and its sample count); empty for none, which keeps the UIDs of
        series made before variants existed.

    Returns
    -------
    pydicom.uid.UID
        The same UID for a re-run on the same inputs with the same preset, strength and
        weights, so it replaces its earlier result in the PACS; any other run, whose pixels
        may differ, gets another UID.
    """
    inputs = hashlib.sha256("\n".join(sorted(source_sop_uids)).encode("ascii")).hexdigest()
    parts = [source_series_uid, inputs, preset, strength, model_version, weights_sha256]
    return _uid_from_parts("derived-series", *parts, *([variant] if variant else []))


def derived_sop_uid(derived_series_uid: str, source_sop_uid: str) -> UID:
    """Return the SOPInstanceUID of the derived instance made from a source instance.

    Parameters
    ----------
    derived_series_uid : str
        The derived series' UID (:func:`derived_series_uid`), which holds everything else
        the pixels depend on.
    source_sop_uid : str
        SOPInstanceUID (0008,0018) of the source instance.

    Returns
    -------
    pydicom.uid.UID
        The same UID for the same inputs; any changed input gives a different UID.
    """
    return _uid_from_parts("derived-instance", derived_series_uid, source_sop_uid)


def device_uid(model_name: str, model_version: str, weights_sha256: str) -> UID:
    """Return the DeviceUID (0018,1002) identifying one model build as processing equipment.

    Parameters
    ----------
    model_name : str
        Registry name of the model.
    model_version : str
        Version of the model.
    weights_sha256 : str
        Hex SHA-256 of the weights file; retrained weights are a different device.

    Returns
    -------
    pydicom.uid.UID
        The same UID for the same inputs; any changed input gives a different UID.
    """
    return _uid_from_parts("device", model_name, model_version, weights_sha256)
