"""FastAPI application of the admin API."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from sqlalchemy import Engine, text

from pacs_node import __version__
from pacs_node.api.dicomweb import create_dicomweb_router
from pacs_node.db.archive import ArchiveIndex
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository
from pacs_node.ingest import Receiver


def create_app(
    repository: JobRepository, engine: Engine, receiver: Receiver | None = None
) -> FastAPI:
    """The admin API over the job database and the DICOMweb routes (STOW-RS needs
    ``receiver``)."""
    app = FastAPI(title="PACS Enhancement Node", version=__version__)
    app.include_router(
        create_dicomweb_router(repository, ArchiveIndex(repository.session_factory), receiver)
    )

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Liveness plus a database round trip."""
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as exc:  # edge: report, do not crash
            raise HTTPException(status_code=503, detail=f"database unavailable: {exc}") from exc
        return {"status": "ok", "version": __version__}

    @app.get("/api/jobs")
    def list_jobs(
        status: JobStatus | None = None,
        limit: int = Query(default=100, ge=1, le=1000),
        offset: int = Query(default=0, ge=0),
    ) -> list[dict[str, Any]]:
        """Jobs, newest first."""
        return [
            asdict(job) for job in repository.list_jobs(status=status, limit=limit, offset=offset)
        ]

    @app.get("/api/jobs/{job_id}")
    def show_job(job_id: int) -> dict[str, Any]:
        """One job with its event trail and per-instance send results."""
        job = repository.get_job(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"job {job_id} not found")
        return asdict(job)

    return app
