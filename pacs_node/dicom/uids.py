"""Deterministic UIDs for derived series, instances and processing devices (2.25 root)."""

from __future__ import annotations

import json
import uuid

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


def derived_series_uid(source_series_uid: str, preset: str, model_version: str) -> UID:
    """Return the SeriesInstanceUID of the derived series made from a source series.

    Parameters
    ----------
    source_series_uid : str
        SeriesInstanceUID (0020,000E) of the source series.
    preset : str
        Name of the enhancement preset.
    model_version : str
        Version of the model that produced the pixels.

    Returns
    -------
    pydicom.uid.UID
        The same UID for the same inputs, so re-processing a series replaces its earlier
        result in the PACS instead of adding a duplicate series.
    """
    return _uid_from_parts("derived-series", source_series_uid, preset, model_version)


def derived_sop_uid(source_sop_uid: str, preset: str, model_version: str) -> UID:
    """Return the SOPInstanceUID of the derived instance made from a source instance.

    Parameters
    ----------
    source_sop_uid : str
        SOPInstanceUID (0008,0018) of the source instance.
    preset : str
        Name of the enhancement preset.
    model_version : str
        Version of the model that produced the pixels.

    Returns
    -------
    pydicom.uid.UID
        The same UID for the same inputs; any changed input gives a different UID.
    """
    return _uid_from_parts("derived-instance", source_sop_uid, preset, model_version)


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
