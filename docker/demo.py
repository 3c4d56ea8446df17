"""`make demo`: the node beside a real PACS on one machine, without Docker.

Starts a private Orthanc (Debian's ``orthanc`` with its DICOMweb and, where installed, web
viewer plugins) as the PACS and ``pacs-node serve`` with its embedded worker, sending
derived series back to Orthanc. It loads a real CT study from ``../shared/data`` into
Orthanc, has Orthanc send it to the node by C-STORE (as a PACS routing rule would), waits
until every job has finished and the derived series are in Orthanc, and prints where to
look. It keeps running until Ctrl-C (``--once``: stops after the check, for tests).

Usage::

    python docker/demo.py [--study philips|pancreas] [--preset ct-denoise] [--once]
                          [--free-ports] [--work var/demo]

With ``--orthanc-url``, ``--node-url`` and ``--token`` it starts nothing and drives a stack
that is already running (the ``demo`` service of ``docker/compose.yaml``); that Orthanc
must know the node as the modality ``node``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
STUDIES = {"philips": "ct_study_philips.tar.xz", "pancreas": "ct_pancreas_tcia.tar.xz"}
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
FINISHED = {"DONE", "FAILED", "SKIPPED", "HELD"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _plugin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/share/orthanc/plugins*/lib{name}.so"))
    return found[0] if found else None


def _wait(url: str, seconds: float, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited during start-up (code {process.returncode})")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{what} did not answer at {url} within {seconds:.0f} s")


def start_orthanc(work: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    """Orthanc as the PACS: its own configuration and storage under ``work``; it knows the
    node as the DICOM modality ``node``."""
    if not Path(ORTHANC).exists():
        raise SystemExit("Orthanc is not installed (make test-deps installs it)")
    plugins = [p for p in (_plugin("OrthancDicomWeb"), _plugin("OrthancWebViewer")) if p]
    config = {
        "Name": "PACS (pacs-node demo)", "DicomAet": "ORTHANC",
        "DicomPort": ports["orthanc_dicom"], "HttpPort": ports["orthanc_http"],
        "StorageDirectory": str(work / "orthanc" / "storage"),
        "IndexDirectory": str(work / "orthanc" / "index"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomModalities": {"node": ["ENHANCE", "127.0.0.1", ports["node_dicom"]]},
        "Plugins": plugins, "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }  # fmt: skip
    (work / "orthanc").mkdir(parents=True, exist_ok=True)
    path = work / "orthanc" / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = (work / "orthanc" / "orthanc.log").open("wb")
    process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    _wait(f"http://127.0.0.1:{ports['orthanc_http']}/system", 60, process, "Orthanc")
    return process


def start_node(
    work: Path, ports: dict[str, int], preset: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``pacs-node serve`` (embedded worker, SQLite) sending to Orthanc; an admin token."""
    binary = str(Path(sys.executable).parent / "pacs-node")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_NODE_")}
    env.update(PACS_NODE_DATA_DIR=str(work / "node"), PACS_NODE_PORT=str(ports["node_dicom"]),
               PACS_NODE_HTTP_PORT=str(ports["node_http"]), PACS_NODE_PRESET=preset,
               PACS_NODE_DESTINATION=f"ORTHANC@127.0.0.1:{ports['orthanc_dicom']}",
               PACS_NODE_SERIES_TIMEOUT_S="3")  # fmt: skip
    subprocess.run([binary, "db", "upgrade"], env=env, check=True, capture_output=True)
    created = subprocess.run([binary, "tokens", "create", f"demo-{int(time.time())}", "--role",
                              "admin", "--json"], env=env, check=True, capture_output=True,
                             text=True)  # fmt: skip
    token = str(json.loads(created.stdout)["token"])
    log = (work / "node.log").open("wb")
    process = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    _wait(f"http://127.0.0.1:{ports['node_http']}/api/health", 120, process, "the node")
    return process, token


def load_study(work: Path, study: str, orthanc: str, data_dir: Path) -> str:
    """Put the study's files into Orthanc; its Orthanc study ID."""
    archive = data_dir / STUDIES[study]
    if not archive.is_file():
        raise SystemExit(f"{archive} is missing (the shared data folder, shared/data/README.md)")
    target = work / "study"
    if not target.is_dir():
        with tarfile.open(archive, "r:xz") as tar:
            tar.extractall(target, filter="data")
    studies: set[str] = set()
    for path in sorted(p for p in target.rglob("*") if p.is_file()):
        answer = requests.post(f"{orthanc}/instances", data=path.read_bytes(), timeout=30)
        if answer.status_code == 200:  # DICOMDIR files and licences are refused: skipped
            studies.add(answer.json()["ParentStudy"])
    if len(studies) != 1:
        raise SystemExit(f"expected one study in {archive.name}, Orthanc holds {len(studies)}")
    return studies.pop()


def wait_for_jobs(api: str, token: str, timeout_s: float) -> list[dict[str, Any]]:
    """Every job finished (at least one), or exit with what is left."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout_s
    jobs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        jobs = requests.get(f"{api}/api/jobs", headers=headers, timeout=10).json()
        if jobs and all(j["status"] in FINISHED for j in jobs):
            return jobs
        time.sleep(1)
    states = ", ".join(f"{j['id']}: {j['status']}" for j in jobs) or "no job"
    raise SystemExit(f"jobs not finished within {timeout_s:.0f} s ({states})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=sorted(STUDIES), default="philips")
    parser.add_argument("--preset", default="ct-denoise")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "demo")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--once", action="store_true", help="stop after the check")
    parser.add_argument("--free-ports", action="store_true", help="not 4242/8042/11112/8000")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the jobs")
    parser.add_argument("--orthanc-url", help="a running Orthanc (with --node-url, --token)")
    parser.add_argument("--node-url", help="a running node's HTTP root")
    parser.add_argument("--token", help="an admin token of that node")
    args = parser.parse_args()
    attached = (args.orthanc_url, args.node_url, args.token)
    if any(attached) and not all(attached):
        parser.error("--orthanc-url, --node-url and --token go together")
    names = ("orthanc_dicom", "orthanc_http", "node_dicom", "node_http")
    defaults = (4242, 8042, 11112, 8000)
    ports = {
        n: _free_port() if args.free_ports else d for n, d in zip(names, defaults, strict=True)
    }
    if args.work.exists():
        shutil.rmtree(args.work)  # a fresh demo each time
    args.work.mkdir(parents=True)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if all(attached):
            orthanc, api = args.orthanc_url.rstrip("/"), args.node_url.rstrip("/")
            token = args.token
        else:
            processes.append(start_orthanc(args.work, ports))
            node, token = start_node(args.work, ports, args.preset)
            processes.append(node)
            orthanc = f"http://127.0.0.1:{ports['orthanc_http']}"
            api = f"http://127.0.0.1:{ports['node_http']}"
        study = load_study(args.work, args.study, orthanc, args.data_dir)
        before = requests.get(f"{orthanc}/studies/{study}", timeout=10).json()["Series"]
        print(f"PACS (Orthanc) holds the {args.study} study: {len(before)} series; "
              f"sending it to the node by C-STORE", flush=True)  # fmt: skip
        sent = requests.post(f"{orthanc}/modalities/node/store", json={"Resources": [study],
                          "Synchronous": True}, timeout=600)  # fmt: skip
        sent.raise_for_status()
        jobs = wait_for_jobs(api, token, args.timeout)
        done = [j for j in jobs if j["status"] == "DONE"]
        deadline = time.monotonic() + 60
        after = before
        while time.monotonic() < deadline and len(after) < len(before) + len(done):
            time.sleep(1)
            after = requests.get(f"{orthanc}/studies/{study}", timeout=10).json()["Series"]
        print(f"\n{'job':>4}  {'status':8}  {'QA':5}  series")
        for job in sorted(jobs, key=lambda j: j["id"]):
            qa = (job.get("qa") or {}).get("verdict", "-")
            reason = f" ({job['error_message']})" if job["status"] != "DONE" else ""
            print(f"{job['id']:>4}  {job['status']:8}  {qa:5}  {job['series_number'] or ''} "
                  f"{job['series_description'] or ''}{reason}"[:150])  # fmt: skip
        print(f"\nThe PACS now holds {len(after)} series of the study ({len(before)} sent, "
              f"{len(after) - len(before)} enhanced series came back).")  # fmt: skip
        print(f"  PACS (Orthanc Explorer):  {orthanc}/app/explorer.html#study?uuid={study}")
        if _plugin("OrthancWebViewer"):
            print(f"  Orthanc Web Viewer:       {orthanc}/web-viewer/app/viewer.html?series=<ID>")
        print(f"  Node dashboard:           {api}/ui/  (token {token})")
        if done:
            print(f"  Before / after:           {api}/ui/jobs/{done[0]['id']}")
        ok = bool(done) and len(after) == len(before) + len(done)
        if not ok:
            print("The enhanced series did not all come back: see var/demo/node.log", flush=True)
            return 1
        if args.once or all(attached):
            return 0
        print("\nRunning; Ctrl-C stops Orthanc and the node.", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    raise SystemExit(main())
