"""A worker on another host (``worker.node_url``) uploads each derived instance back to
the node (``PUT /api/jobs/{id}/outputs/{sop_uid}``), so the node serves and keeps the
derived series without a shared disk."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import requests

from pacs_node.db.repository import LeaseLost
from pacs_node.errors import DispatchError

logger = logging.getLogger(__name__)


def upload_outputs(
    node_url: str,
    token: str,
    job_id: int,
    outputs: Sequence[tuple[str, Path]],
    timeout_s: float = 120.0,
) -> list[str]:
    """Upload ``outputs`` (``(sop_instance_uid, local file)``) of job ``job_id``; returns
    where the node stored each, in order.

    Raises
    ------
    LeaseLost
        The node no longer lets this worker add outputs to the job (it is not running).
    DispatchError
        The node cannot be reached or refused an instance (the task retries, then the job
        fails with the reason).
    """
    stored: list[str] = []
    base = node_url.rstrip("/")
    with requests.Session() as session:
        session.headers.update(
            {"Authorization": f"Bearer {token}", "Content-Type": "application/dicom"}
        )
        for sop_uid, path in outputs:
            url = f"{base}/api/jobs/{job_id}/outputs/{sop_uid}"
            try:
                response = session.put(url, data=path.read_bytes(), timeout=timeout_s)
            except requests.RequestException as exc:
                raise DispatchError(f"upload to the node {node_url} failed: {exc}") from exc
            if response.status_code == 409:  # the job is no longer running
                raise LeaseLost(f"job {job_id}: the node refused its outputs: {_detail(response)}")
            if response.status_code != 201:
                raise DispatchError(
                    f"upload to the node {node_url}: HTTP {response.status_code} "
                    f"{_detail(response)}"
                )
            stored.append(str(response.json()["path"]))
    logger.info("job %d: %d derived instances uploaded to %s", job_id, len(stored), node_url)
    return stored


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", ""))
    except ValueError:
        return response.text[:200]
