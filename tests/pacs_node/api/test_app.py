"""The admin API over a real job database."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from pacs_node.api.app import create_app
from pacs_node.db.repository import JobRepository, Route
from tests.pacs_node.db.test_repository import _instance


def test_health_jobs_and_job_detail(repository: JobRepository, engine: Engine) -> None:
    job_id = repository.record_instance(_instance("1.1"), route=Route("ct-denoise")).job_id
    assert job_id is not None
    repository.close_receiving(job_id, timedelta(0), "a localizer")
    client = TestClient(create_app(repository, engine))
    assert client.get("/api/health").json()["status"] == "ok"
    jobs = client.get("/api/jobs").json()
    assert [(j["id"], j["status"]) for j in jobs] == [(job_id, "SKIPPED")]
    assert client.get("/api/jobs", params={"status": "DONE"}).json() == []
    detail = client.get(f"/api/jobs/{job_id}").json()
    assert [e["status"] for e in detail["events"]] == ["RECEIVING", "SKIPPED"]
    assert "a localizer" in detail["error_message"]
    assert client.get("/api/jobs/999").status_code == 404
    assert client.get("/api/jobs", params={"status": "BOGUS"}).status_code == 422


def test_health_reports_an_unreachable_database(repository: JobRepository, engine: Engine) -> None:
    client = TestClient(create_app(repository, engine))
    engine.dispose()
    broken = create_app(repository, _broken_engine())
    assert TestClient(broken).get("/api/health").status_code == 503
    assert client.get("/api/health").status_code == 200  # the real one reconnects


def _broken_engine() -> Engine:
    from pacs_node.db.session import make_engine

    return make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
