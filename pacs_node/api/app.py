"""FastAPI application: the admin API (bearer tokens, roles) and the DICOMweb routes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel
from sqlalchemy import Engine, text

from pacs_node import __version__
from pacs_node.admin import JobAdmin, Principal, TokenStore
from pacs_node.api.auth import make_auth, make_dicomweb_access
from pacs_node.api.dashboard import create_dashboard_router
from pacs_node.api.dicomweb import create_dicomweb_router
from pacs_node.api.outputs import create_outputs_router
from pacs_node.api.viewer import SliceService, create_viewer_router
from pacs_node.db.archive import ArchiveIndex
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository, JobView
from pacs_node.errors import ActionError
from pacs_node.ingest import Receiver
from pacs_node.metrics import JobCollector
from pacs_node.settings import Settings

HIDDEN = "(hidden)"
PATIENT_FIELDS = ("patient_id", "patient_name", "accession_number")
# A worker is live when its heartbeat (every 10 s) is this recent.
WORKER_LIVE_WINDOW = timedelta(seconds=60)
MIN_FREE_DISK_BYTES = 1 << 30


@dataclass(frozen=True)
class Readiness:
    """What ``/api/ready`` checks besides the database: broker, disk, workers, and the
    receiving processes (``scp.processes`` above 1)."""

    settings: Settings | None = None
    broker_check: Any = None  # callable returning None or raising when the broker is down
    # Callable returning (processes receiving now, processes configured).
    receivers: Callable[[], tuple[int, int]] | None = None


class RerunRequest(BaseModel):
    """Body of ``POST /api/jobs/{id}/rerun``."""

    preset: str | None = None
    strength: str | None = None


def _redacted(value: str | None) -> str | None:
    """A URL with its password replaced (``user:***@host``)."""
    if not value or "@" not in value or "://" not in value:
        return value
    scheme, rest = value.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else value


def create_app(
    repository: JobRepository,
    engine: Engine,
    receiver: Receiver | None = None,
    readiness: Readiness | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The admin API over the job database, and the DICOMweb routes (STOW-RS needs
    ``receiver``). Every ``/api`` route but ``health`` and ``ready`` needs a bearer token;
    actions and configuration need the ``admin`` role. DICOMweb needs a token too, unless
    the settings in ``readiness`` set ``dicomweb.allow_anonymous``."""
    app = FastAPI(title="PACS Enhancement Node", version=__version__)
    tokens = TokenStore(repository.session_factory)
    anonymous = (
        readiness is not None
        and readiness.settings is not None
        and (readiness.settings.dicomweb.allow_anonymous)
    )
    app.include_router(
        create_dicomweb_router(
            repository, ArchiveIndex(repository.session_factory), receiver,
            make_dicomweb_access(tokens, anonymous),
        )
    )  # fmt: skip
    admin = JobAdmin(repository.session_factory)
    checks = readiness or Readiness()
    principal, administrator, page_user = make_auth(tokens)

    viewer = Depends(principal)
    admin_only = Depends(administrator)

    def shown(job: JobView, who: Principal) -> dict[str, Any]:
        data = asdict(job)
        if not who.sees_patient:
            for name in PATIENT_FIELDS:
                if data.get(name) is not None:
                    data[name] = HIDDEN
        return data

    def act(action: Any) -> Any:
        try:
            return action()
        except ActionError as exc:
            raise HTTPException(404 if exc.missing else 409, str(exc)) from exc

    app.include_router(create_viewer_router(repository, SliceService(repository), viewer))
    app.include_router(create_outputs_router(repository, receiver, principal))
    app.include_router(create_dashboard_router(repository, tokens, page_user))
    metrics_registry = registry or CollectorRegistry()
    metrics_registry.register(JobCollector(repository.session_factory))

    @app.get("/metrics", tags=["status"], response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus metrics, names prefixed ``pacs_node_`` (no token: for scrapers; no
        patient data in them)."""
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/health", tags=["status"])
    def health() -> dict[str, Any]:
        """Liveness plus a database round trip (no token: for probes)."""
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # edge: report, do not crash
            raise HTTPException(status_code=503, detail=f"database unavailable: {exc}") from exc
        return {"status": "ok", "version": __version__}

    @app.get("/api/ready", tags=["status"])
    def ready() -> dict[str, Any]:
        """Database, broker, free disk and a live worker (no token: for probes); 503 with
        every failed check named when not ready."""
        results: dict[str, str] = {}
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            results["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - edge: each check reports
            results["database"] = f"unavailable: {exc}"
        if checks.broker_check is not None:
            try:
                checks.broker_check()
                results["broker"] = "ok"
            except Exception as exc:  # noqa: BLE001 - edge: each check reports
                results["broker"] = f"unavailable: {exc}"
        if checks.settings is not None:
            free = shutil.disk_usage(checks.settings.data_dir).free
            results["disk"] = "ok" if free >= MIN_FREE_DISK_BYTES else f"only {free >> 20} MiB free"
        try:
            live = repository.live_workers(WORKER_LIVE_WINDOW)
            results["workers"] = f"{len(live)} live" if live else "no worker seen in 60 s"
        except Exception as exc:  # noqa: BLE001 - edge: each check reports
            results["workers"] = f"unknown: {exc}"
        degraded = []
        if checks.receivers is not None:
            try:
                running, configured = checks.receivers()
                if running == configured:
                    results["receivers"] = f"{running} of {configured} processes receiving"
                else:
                    # The node's own SCP still receives, and new connections go to the
                    # processes that listen: degraded, not unready.
                    results["receivers"] = (
                        f"only {running} of {configured} processes receiving;"
                        " the others are being restarted (see node.log)"
                    )
                    degraded.append("receivers")
            except Exception as exc:  # noqa: BLE001 - edge: each check reports
                results["receivers"] = f"unknown: {exc}"
                degraded.append("receivers")
        ok = all(
            v == "ok" or v.endswith((" live", " receiving")) or k in degraded
            for k, v in results.items()
        )
        if not ok:
            raise HTTPException(503, results)
        return {"status": "degraded" if degraded else "ready", "checks": results}

    @app.get("/api/jobs", tags=["jobs"])
    def list_jobs(
        who: Principal = viewer,
        status: JobStatus | None = None,
        preset: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        calling_ae: str | None = None,
        study: str | None = None,
        accession: str | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> list[dict[str, Any]]:
        """Jobs, newest first; filtering by study or accession needs patient access."""
        if (study or accession) and not who.sees_patient:
            raise HTTPException(403, "filtering by study or accession needs patient access")
        jobs = repository.list_jobs(
            status=status, preset=preset, since=since, until=until, calling_ae_title=calling_ae,
            study_instance_uid=study, accession_number=accession, limit=limit, offset=offset,
        )  # fmt: skip
        return [shown(job, who) for job in jobs]

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def show_job(job_id: int, who: Principal = viewer) -> dict[str, Any]:
        """One job with its event trail, outputs and per-instance send results."""
        job = repository.get_job(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"job {job_id} not found")
        return shown(job, who)

    @app.post("/api/jobs/{job_id}/retry", tags=["actions"])
    def retry(job_id: int, force: bool = False, who: Principal = admin_only) -> dict[str, Any]:
        """FAILED → QUEUED (SKIPPED for a failed forward); ``force`` also for a job stuck
        RUNNING or SENDING."""
        status: JobStatus = act(lambda: admin.retry(job_id, who.name, force=force))
        return {"job": job_id, "status": status.value}

    @app.post("/api/jobs/{job_id}/release", tags=["actions"])
    def release(job_id: int, who: Principal = admin_only) -> dict[str, Any]:
        """HELD → QUEUED: the output the QA gate held is sent as it is."""
        act(lambda: admin.release(job_id, who.name))
        return {"job": job_id, "status": JobStatus.QUEUED.value}

    @app.post("/api/jobs/{job_id}/reject", tags=["actions"])
    def reject(job_id: int, who: Principal = admin_only) -> dict[str, Any]:
        """HELD → FAILED (qa_rejected): the held output is never sent."""
        act(lambda: admin.reject(job_id, who.name))
        return {"job": job_id, "status": JobStatus.FAILED.value}

    @app.post("/api/jobs/{job_id}/cancel", tags=["actions"])
    def cancel(job_id: int, who: Principal = admin_only) -> dict[str, Any]:
        """RECEIVING or QUEUED → FAILED (cancelled)."""
        act(lambda: admin.cancel(job_id, who.name))
        return {"job": job_id, "status": JobStatus.FAILED.value}

    @app.post("/api/jobs/{job_id}/rerun", tags=["actions"])
    def rerun(
        job_id: int, body: RerunRequest | None = None, who: Principal = admin_only
    ) -> dict[str, Any]:
        """A new job on the same series, with another preset or the same."""
        request = body or RerunRequest()
        new_id = act(lambda: admin.rerun(job_id, who.name, request.preset, request.strength))
        return {"job": new_id, "status": JobStatus.QUEUED.value, "rerun_of": job_id}

    @app.delete("/api/jobs/{job_id}", tags=["actions"])
    def delete_job(job_id: int, who: Principal = admin_only) -> dict[str, Any]:
        """Delete a finished job with its derived files (and its received series when no
        other job uses it)."""
        removed: list[Path] = act(lambda: admin.delete(job_id, who.name))
        return {"job": job_id, "deleted_files": len(removed)}

    @app.get("/api/config", tags=["status"])
    def config(who: Principal = admin_only) -> dict[str, Any]:
        """The node's effective settings, passwords in URLs redacted."""
        if checks.settings is None:
            raise HTTPException(404, "no configuration attached to this app")
        data = checks.settings.model_dump(mode="json")
        data["database_url"] = _redacted(checks.settings.db_url)
        data["broker_url"] = _redacted(checks.settings.celery_broker_url)
        return data

    return app
