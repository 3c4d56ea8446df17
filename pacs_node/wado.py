"""WADO-RS client: a worker on another host fetches a job's input instances from the node."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import requests

from pacs_node.api.multipart import MultipartError, parse_content_type, split_related
from pacs_node.errors import DispatchError, InvalidSeriesError
from pacs_node.storage import InstanceStore

logger = logging.getLogger(__name__)


def fetch_series_instances(
    node_url: str,
    study_uid: str,
    series_uid: str,
    sop_uids: Sequence[str],
    store: InstanceStore,
    token: str | None = None,
    timeout_s: float = 120.0,
) -> list[Path]:
    """Retrieve a series from the node by WADO-RS and keep the instances ``sop_uids``.

    Files land in ``store`` under the same hashed names the node uses (so a second
    attempt reuses them) and are written atomically, exactly as the node serves them.

    Returns
    -------
    list[Path]
        The local files, in the order of ``sop_uids``.

    Raises
    ------
    DispatchError
        The node cannot be reached or answers with an error (transient: the task retries).
    InvalidSeriesError
        The node no longer holds some of the instances.
    """
    wanted = {uid: store.received_path(uid) for uid in sop_uids}
    missing = [uid for uid, path in wanted.items() if not path.is_file()]
    if missing:
        url = f"{node_url.rstrip('/')}/dicom-web/studies/{study_uid}/series/{series_uid}"
        try:
            # As stored, byte for byte (compressed ones too): the worker decodes them itself.
            headers = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
            if token:  # a token of role worker (DICOMweb needs one unless opened)
                headers["Authorization"] = f"Bearer {token}"
            response = requests.get(url, headers=headers, timeout=timeout_s)
        except requests.RequestException as exc:
            raise DispatchError(f"WADO-RS from {node_url} failed: {exc}") from exc
        if response.status_code in (404, 410):
            raise InvalidSeriesError(
                f"the node no longer holds series {series_uid} (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise DispatchError(f"WADO-RS from {node_url}: HTTP {response.status_code}")
        content_type = parse_content_type(response.headers.get("Content-Type", ""))
        try:
            parts = split_related(response.content, content_type.params.get("boundary", ""))
        except MultipartError as exc:
            raise DispatchError(f"WADO-RS from {node_url}: {exc}") from exc
        import pydicom
        from pydicom.filebase import DicomBytesIO

        for _headers, payload in parts:
            uid = str(
                pydicom.dcmread(DicomBytesIO(payload), stop_before_pixels=True).SOPInstanceUID
            )
            if uid in wanted:
                store.write_atomic(wanted[uid], payload)
        logger.info("fetched series %s from %s (%d parts)", series_uid, node_url, len(parts))
    absent = [uid for uid, path in wanted.items() if not path.is_file()]
    if absent:
        raise InvalidSeriesError(
            f"the node's series {series_uid} lacks {len(absent)} of the job's instances"
        )
    return [wanted[uid] for uid in sop_uids]
