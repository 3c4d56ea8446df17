"""Run the real node (`pacs-node serve`) as a subprocess, and its CLI, for end-to-end tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.integration.peers import free_port

BIN = Path(sys.executable).parent
FINISHED = {"DONE", "FAILED", "SKIPPED"}


def node_environment(data_dir: Path, **settings: str) -> dict[str, str]:
    """The calling environment without PACS_NODE_* variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_NODE_")}
    env["PACS_NODE_DATA_DIR"] = str(data_dir)
    env["COLUMNS"] = "200"  # rich tables of the CLI, unwrapped
    env.update({f"PACS_NODE_{k.upper()}": v for k, v in settings.items()})
    return env


class NodeProcess:
    """`pacs-node serve` on free ports with its own data directory."""

    def __init__(self, data_dir: Path, **settings: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.http_port = free_port()
        self.ae_title = settings.pop("ae_title", "ENHANCE")
        self.env = node_environment(
            data_dir,
            ae_title=self.ae_title,
            port=str(self.port),
            http_port=str(self.http_port),
            series_timeout_s=settings.pop("series_timeout_s", "2"),
            monitor_interval_s="0.5",
            **settings,
        )
        self.log_path = data_dir / "node.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [str(BIN / "pacs-node"), "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (self.data_dir / "node.ready").exists():
                return self
            if self._process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"node did not start; log:\n{self.log()}")

    def receiver_pids(self, count: int, timeout_s: float = 60.0) -> list[int]:
        """The pids of the node's ``count`` receiver processes (``scp.processes``), once
        each has logged that it is ready."""
        logs = [self.data_dir / f"receiver-{i}.log" for i in range(1, count + 1)]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            found = re.findall(r"receiver process \d+ started \(pid (\d+)", text)
            if len(found) == count and all(f.exists() and "ready" in f.read_text() for f in logs):
                return [int(pid) for pid in found]
            time.sleep(0.1)
        raise RuntimeError(f"receiver processes not ready:\n{self.log()}")

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        worker = self.data_dir / "worker.log"
        if worker.exists():
            text += "\n--- worker.log ---\n" + worker.read_text(errors="replace")[-6000:]
        return text[-12000:]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `pacs-node ARGS` against this node's configuration."""
        result = subprocess.run(
            [str(BIN / "pacs-node"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"pacs-node {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
            )
        return result

    def token(self, name: str, role: str) -> str:
        """A new API token (``pacs-node tokens create NAME --role ROLE``)."""
        created = self.cli("tokens", "create", name, "--role", role, "--json")
        return str(json.loads(created.stdout)["token"])

    def jobs(self) -> list[dict[str, Any]]:
        return list(json.loads(self.cli("jobs", "list", "--json", "--limit", "1000").stdout))

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(json.loads(self.cli("jobs", "show", str(job_id), "--json").stdout))

    def assert_invariants(self) -> None:
        """The auditor (`pacs-node audit`) finds no broken invariant once the node settled."""
        result = self.cli("audit", "--json", check=False)
        assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout

    def wait_until_finished(self, count: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` jobs exist and all of them are finished."""
        deadline = time.monotonic() + timeout_s
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if len(jobs) >= count and all(j["status"] in FINISHED for j in jobs):
                return jobs
            assert self.running, f"node exited:\n{self.log()}"
            time.sleep(0.5)
        raise TimeoutError(f"jobs not finished in {timeout_s} s: {jobs}\n{self.log()}")


def start_worker(
    node: NodeProcess, name: str, cwd: Path, **settings: str
) -> subprocess.Popen[bytes]:
    """A Celery worker started alone (`celery -A workers.app worker`), like one on
    another host, logging to ``<data_dir>/<name>.log``; ``settings`` override the node's
    (``data_dir="..."``, ``worker__node_url="..."``)."""
    log = open(node.data_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    command = [
        str(BIN / "celery"), "-A", "workers.app", "worker", "--pool", "solo", "--loglevel", "INFO",
        "--queues", node.env["PACS_NODE_WORKER__QUEUE"], "--hostname", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    # The worker is started from another directory, like a worker on another host.
    env = {**node.env, **{f"PACS_NODE_{k.upper()}": v for k, v in settings.items()}}
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)


def wait_for_status(node: NodeProcess, status: str, count: int, timeout_s: float = 60) -> None:
    """Wait until the node has ``count`` jobs, all in ``status``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = node.jobs()
        if len(jobs) == count and all(j["status"] == status for j in jobs):
            return
        time.sleep(0.5)
    raise TimeoutError(f"jobs not all {status}: {node.jobs()}")
