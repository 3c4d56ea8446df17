"""The admin API over a real job database: tokens and roles, actions, readiness, config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from pacs_node.admin import TokenStore
from pacs_node.api.app import HIDDEN, Readiness, create_app
from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository, Route
from pacs_node.settings import Settings
from tests.pacs_node.db.test_repository import _instance

OPEN = {"/api/health", "/api/ready"}


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture()
def tokens(repository: JobRepository) -> dict[str, str]:
    store = TokenStore(repository.session_factory)
    return {
        "admin": store.create("alice", "admin"),
        "viewer": store.create("victor", "viewer"),
        "viewer_phi": store.create("vera", "viewer", show_patient=True),
    }


def _skipped_job(repository: JobRepository, sop: str = "1.1", series: str = "1.2.3.4") -> int:
    received = replace(_instance(sop, series=series), patient_id="PID-7", patient_name="Doe^Jane",
                       accession_number="ACC1")  # fmt: skip
    job_id = repository.record_instance(received, route=Route("ct-denoise")).job_id
    assert job_id is not None
    repository.close_receiving(job_id, timedelta(0), "a localizer")
    return job_id


def test_every_api_route_refuses_a_missing_wrong_or_revoked_token(
    repository: JobRepository, engine: Engine, tokens: dict[str, str]
) -> None:
    app = create_app(repository, engine)
    client = TestClient(app)
    TokenStore(repository.session_factory).revoke("victor")
    routes = [r for r in app.routes if isinstance(r, APIRoute) and r.path.startswith("/api/")]
    protected = [r for r in routes if r.path not in OPEN]
    assert len(protected) >= 7
    for route in protected:
        path = route.path.replace("{job_id}", "1")
        for method in route.methods:
            for headers in ({}, _headers("pn_wrong"), _headers("garbage"),
                            _headers(tokens["viewer"])):  # fmt: skip
                response = client.request(method, path, headers=headers)
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"


def test_viewers_read_without_patient_data_and_cannot_act(
    repository: JobRepository, engine: Engine, tokens: dict[str, str]
) -> None:
    job_id = _skipped_job(repository)
    client = TestClient(create_app(repository, engine, readiness=Readiness(Settings())))
    viewer, phi, admin = (_headers(tokens[k]) for k in ("viewer", "viewer_phi", "admin"))
    [listed] = client.get("/api/jobs", headers=viewer).json()
    assert (listed["id"], listed["status"], listed["patient_id"]) == (job_id, "SKIPPED", HIDDEN)
    assert listed["patient_name"] == HIDDEN and listed["accession_number"] == HIDDEN
    detail = client.get(f"/api/jobs/{job_id}", headers=phi).json()
    assert (detail["patient_id"], detail["accession_number"]) == ("PID-7", "ACC1")
    assert [e["status"] for e in detail["events"]] == ["RECEIVING", "SKIPPED"]
    assert client.get("/api/jobs", params={"accession": "ACC1"}, headers=viewer).status_code == 403
    assert len(client.get("/api/jobs", params={"accession": "ACC1"}, headers=phi).json()) == 1
    base = f"/api/jobs/{job_id}"
    actions = [("POST", f"{base}/retry"), ("POST", f"{base}/cancel"),
               ("POST", f"{base}/rerun"), ("DELETE", base), ("GET", "/api/config")]  # fmt: skip
    for method, path in actions:
        assert client.request(method, path, headers=viewer).status_code == 403, path
    assert client.get("/api/jobs/999", headers=admin).status_code == 404
    assert client.get("/api/jobs", params={"status": "BOGUS"}, headers=admin).status_code == 422
    assert client.get("/api/jobs", params={"preset": "gaussian"}, headers=admin).json() == []


def test_admin_actions_change_jobs_and_name_the_actor(
    repository: JobRepository, engine: Engine, tokens: dict[str, str], tmp_path: Path
) -> None:
    client = TestClient(create_app(repository, engine))
    admin = _headers(tokens["admin"])
    skipped = _skipped_job(repository)
    # Re-run a finished job with another preset: a new QUEUED job on the same series.
    rerun = client.post(f"/api/jobs/{skipped}/rerun", json={"preset": "gaussian"}, headers=admin)
    assert rerun.status_code == 200
    new_id = rerun.json()["job"]
    new = repository.get_job(new_id)
    assert new is not None and (new.status, new.preset) == (JobStatus.QUEUED, "gaussian")
    assert new.events[0].actor == "alice" and "re-run of job" in new.events[0].message
    # Retry only a FAILED job; cancel only a waiting one.
    assert client.post(f"/api/jobs/{new_id}/retry", headers=admin).status_code == 409
    assert client.post(f"/api/jobs/{new_id}/cancel", headers=admin).status_code == 200
    cancelled = repository.get_job(new_id)
    assert cancelled is not None and cancelled.status is JobStatus.FAILED
    assert cancelled.error_message == "cancelled by alice"
    assert client.post(f"/api/jobs/{new_id}/retry", headers=admin).status_code == 200
    retried = repository.get_job(new_id)
    assert retried is not None and retried.status is JobStatus.QUEUED
    assert retried.error_message is None and retried.events[-1].actor == "alice"
    assert new_id in repository.undispatched_jobs()  # the monitor publishes it again
    # A stuck RUNNING job needs force.
    assert repository.claim(new_id, "dead-worker")
    assert client.post(f"/api/jobs/{new_id}/retry", headers=admin).status_code == 409
    assert client.post(f"/api/jobs/{new_id}/retry?force=true", headers=admin).status_code == 200
    assert client.delete(f"/api/jobs/{new_id}", headers=admin).status_code == 409  # not finished
    assert client.post("/api/jobs/999/cancel", headers=admin).status_code == 404
    # Delete: the job, its derived files, and the series once no job uses it.
    derived = tmp_path / "derived.dcm"
    derived.write_bytes(b"x")
    repository.replace_outputs(skipped, "9.9", [("9.9.1", "1.1", str(derived))])
    deleted = client.delete(f"/api/jobs/{skipped}", headers=admin)
    assert deleted.status_code == 200 and deleted.json()["deleted_files"] == 1
    assert not derived.exists() and repository.get_job(skipped) is None
    assert repository.find_instance("1.1")  # job new_id still uses the series


def test_ready_checks_database_broker_disk_and_a_live_worker(
    repository: JobRepository, engine: Engine, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    up = TestClient(create_app(repository, engine, readiness=Readiness(settings, lambda: None)))
    response = up.get("/api/ready")
    assert response.status_code == 503
    assert response.json()["detail"]["workers"] == "no worker seen in 60 s"
    repository.beat("worker-1@host")
    ready = up.get("/api/ready").json()
    assert ready["checks"] == {"database": "ok", "broker": "ok", "disk": "ok", "workers": "1 live"}

    def broker_down() -> None:
        raise ConnectionError("connection refused")

    down = TestClient(create_app(repository, engine, readiness=Readiness(settings, broker_down)))
    failed = down.get("/api/ready")
    assert failed.status_code == 503
    assert failed.json()["detail"]["broker"] == "unavailable: connection refused"


def test_ready_reports_receiving_processes_and_a_missing_one_as_degraded(
    repository: JobRepository, engine: Engine, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    repository.beat("worker-1@host")
    counts = [(3, 3)]

    def client(broker: Callable[[], None] = lambda: None) -> TestClient:
        checks = Readiness(settings, broker, lambda: counts[0])
        return TestClient(create_app(repository, engine, readiness=checks))

    ready = client().get("/api/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["checks"]["receivers"] == "3 of 3 processes receiving"
    counts[0] = (2, 3)  # one receiver process is being restarted: the node still receives
    degraded = client().get("/api/ready")
    assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"
    assert degraded.json()["checks"]["receivers"].startswith("only 2 of 3 processes receiving")

    def broker_down() -> None:
        raise ConnectionError("connection refused")

    assert client(broker_down).get("/api/ready").status_code == 503  # degraded and down


def test_config_is_admin_only_and_redacts_passwords(
    repository: JobRepository, engine: Engine, tokens: dict[str, str], tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url="postgresql+psycopg://pacs:s3cret@db/pacs",
                        broker_url="redis://:hunter2@redis:6379/0")  # fmt: skip
    client = TestClient(create_app(repository, engine, readiness=Readiness(settings)))
    config = client.get("/api/config", headers=_headers(tokens["admin"])).json()
    assert config["database_url"] == "postgresql+psycopg://pacs:***@db/pacs"
    assert config["broker_url"] == "redis://:***@redis:6379/0"
    assert "s3cret" not in str(config) and "hunter2" not in str(config)


def test_health_reports_an_unreachable_database(repository: JobRepository, engine: Engine) -> None:
    client = TestClient(create_app(repository, engine))
    engine.dispose()
    broken = create_app(repository, _broken_engine())
    assert TestClient(broken).get("/api/health").status_code == 503
    assert client.get("/api/health").status_code == 200  # the real one reconnects


def _broken_engine() -> Engine:
    from pacs_node.db.session import make_engine

    return make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")


def _held_job(repository: JobRepository, sop: str) -> int:
    """A job whose output the QA gate held (as a worker leaves it)."""
    route = Route("identity", qa_failure="hold")
    job_id = repository.record_instance(_instance(sop, series=f"1.2.9.{sop}"), route=route).job_id
    assert job_id is not None
    repository.close_receiving(job_id, timedelta(0), None)
    assert repository.claim(job_id, "w1", lease=timedelta(seconds=60))
    report = {"verdict": "fail", "unit": "HU", "noise_sigma": 12.0, "slices_measured": 4,
              "checks": {"mean_shift": {"value": 40.0, "limit": 5.0, "passed": False,
                                        "detail": ""}},
              "policy": "hold", "action": "hold"}  # fmt: skip
    repository.record_qa(job_id, report, "QA failed: mean_shift 40 (limit 5)", owner="w1")
    repository.qa_outcome(job_id, JobStatus.HELD, "held", owner="w1")
    return job_id


def test_held_jobs_are_shown_and_released_or_rejected_by_admins(
    repository: JobRepository, engine: Engine, tokens: dict[str, str]
) -> None:
    client = TestClient(create_app(repository, engine))
    held, other = _held_job(repository, "7.1"), _held_job(repository, "7.2")
    shown = client.get(f"/api/jobs/{held}", headers=_headers(tokens["viewer"])).json()
    assert shown["status"] == "HELD" and shown["qa"]["checks"]["mean_shift"]["value"] == 40.0
    assert shown["qa_policy"] == "hold"
    listed = client.get("/api/jobs?status=HELD", headers=_headers(tokens["viewer"])).json()
    assert sorted(j["id"] for j in listed) == [held, other]
    assert (
        client.post(f"/api/jobs/{held}/release", headers=_headers(tokens["viewer"])).status_code
        == 403
    )
    client.cookies.set("pacs_node_token", tokens["admin"])
    page = client.get(f"/ui/jobs/{held}").text
    assert 'id="qa-checks"' in page and "mean_shift" in page and 'id="release"' in page
    admin = _headers(tokens["admin"])
    assert client.post(f"/api/jobs/{held}/release", headers=admin).json()["status"] == "QUEUED"
    released = repository.get_job(held)
    assert released is not None and released.status is JobStatus.QUEUED
    assert released.qa is not None and released.qa["released_by"] == "alice"
    assert held in repository.undispatched_jobs()
    assert client.post(f"/api/jobs/{held}/release", headers=admin).status_code == 409
    assert client.post(f"/api/jobs/{other}/reject", headers=admin).status_code == 200
    rejected = repository.get_job(other)
    assert rejected is not None and rejected.status is JobStatus.FAILED
    assert (rejected.error_code, rejected.events[-1].actor) == ("qa_rejected", "alice")
    assert 'id="release"' not in client.get(f"/ui/jobs/{other}").text
    # A re-run keeps the rule's QA policy.
    rerun = client.post(f"/api/jobs/{other}/rerun", headers=admin).json()["job"]
    again = repository.get_job(rerun)
    assert again is not None and again.qa_policy == "hold"
