"""`pacs-node tokens` and `pacs-node jobs retry|cancel|rerun|delete`, run as the real command."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

from pacs_node.db.models import JobStatus
from pacs_node.db.repository import JobRepository, Route
from pacs_node.db.session import make_engine, make_session_factory
from tests.integration.node import BIN, node_environment
from tests.pacs_node.db.test_repository import _instance


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "pacs-node"), *args], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_tokens_and_job_actions_from_the_command_line(tmp_path: Path) -> None:
    env = node_environment(tmp_path)
    assert _cli(env, "db", "upgrade").returncode == 0
    created = _cli(env, "tokens", "create", "ops", "--role", "admin", "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    assert token.startswith("pn_") and token not in (tmp_path / "jobs.sqlite").read_bytes().decode(
        "latin-1"
    )
    assert _cli(env, "tokens", "create", "ops", "--json").returncode == 1  # name taken
    assert _cli(env, "tokens", "create", "x", "--role", "root").returncode == 1
    listed = json.loads(_cli(env, "tokens", "list", "--json").stdout)
    assert [(t["name"], t["role"], t["revoked_at"]) for t in listed] == [("ops", "admin", None)]
    assert _cli(env, "tokens", "revoke", "ops").returncode == 0
    assert _cli(env, "tokens", "revoke", "ops").returncode == 1  # already revoked

    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    repository = JobRepository(make_session_factory(make_engine(url)))
    job_id = repository.record_instance(_instance("1.1"), route=Route("ct-denoise")).job_id
    assert job_id is not None
    refused = _cli(env, "jobs", "retry", str(job_id), "--json")
    assert refused.returncode == 1 and "not FAILED" in json.loads(refused.stdout)["error"]
    assert _cli(env, "jobs", "cancel", str(job_id)).returncode == 0
    job = repository.get_job(job_id)
    assert job is not None and job.status is JobStatus.FAILED
    assert job.events[-1].actor.startswith("cli:")
    rerun = json.loads(_cli(env, "jobs", "rerun", str(job_id), "--preset", "gaussian",
                            "--json").stdout)  # fmt: skip
    assert rerun["rerun_of"] == job_id and rerun["status"] == "QUEUED"
    assert repository.close_receiving(job_id, timedelta(0), None) is None  # already finished
    deleted = json.loads(_cli(env, "jobs", "delete", str(job_id), "--json").stdout)
    assert deleted == {"job": job_id, "deleted_files": 0}
    assert repository.get_job(job_id) is None
    # Its trail outlives it: `jobs show` reads the tombstone.
    shown = json.loads(_cli(env, "jobs", "show", str(job_id), "--json").stdout)["deleted"]
    assert shown["deleted_by"].startswith("cli:") and shown["status"] == "FAILED"
    assert [e["status"] for e in shown["events"]][:1] == ["RECEIVING"]
    assert "cancel" in " ".join(e["message"] for e in shown["events"]).lower()
    assert "trail:" in _cli(env, "jobs", "show", str(job_id)).stdout
    assert _cli(env, "jobs", "delete", "999").returncode == 1
