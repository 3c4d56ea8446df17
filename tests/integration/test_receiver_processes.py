"""`scp.processes`: receiver children share the DICOM port with the node, parallel
associations are spread over the processes, every instance is stored, and a node killed
with SIGKILL takes its receivers with it."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.helpers.synthetic import make_ct_series
from tests.integration.node import NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc (Linux)"),
]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _connections(pid: int, port: int) -> int:
    """How many established TCP connections on local ``port`` process ``pid`` holds."""
    inodes = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        held += target.startswith("socket:[") and target[8:-1] in inodes
    return held


def _readiness(node: NodeProcess) -> dict[str, str]:
    """The checks of the node's /api/ready (ready or not: a worker may not have beaten yet)."""
    answer = httpx.get(f"http://127.0.0.1:{node.http_port}/api/ready", timeout=10).json()
    return answer.get("checks") or answer["detail"]


def _received(node: NodeProcess) -> float:
    """``pacs_node_instances_received_total`` of C-STORE on the node's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "pacs_node_instances_received_total"
        and sample.labels == {"protocol": "C-STORE"}
    )


def test_parallel_associations_are_received_by_several_processes(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", scp__processes="3", preset="identity",
                       series_timeout_s="5").start()  # fmt: skip
    assert node._process is not None
    receivers: list[int] = []
    try:
        receivers = node.receiver_pids(2)
        series = make_ct_series(None, n_slices=24, rows=32, cols=32, seed=11)
        scanner = AE(ae_title="SCANNER")
        scanner.add_requested_context(CTImageStorage)
        associations = [scanner.associate("127.0.0.1", node.port, ae_title=node.ae_title)
                        for _ in range(12)]  # fmt: skip
        try:
            assert all(a.is_established for a in associations)
            # Twelve associations at once, spread by the kernel: more than one process
            # holds some (all on one of three would happen once in 10^5 runs).
            held = {pid: _connections(pid, node.port)
                    for pid in [node._process.pid, *receivers]}  # fmt: skip
            assert sum(held.values()) == 12 and max(held.values()) < 12, held
            for index, association in enumerate(associations):
                for ds in series[index * 2 : index * 2 + 2]:
                    assert association.send_c_store(ds).Status == 0
        finally:
            for association in associations:
                association.release()
        # One job of the 24 instances the three processes received, processed as usual.
        [job] = node.wait_until_finished(1)
        assert job["instance_count"] == 24 and job["status"] == "DONE", job
        node.assert_invariants()
        # /metrics counts what every process received (receivers publish each second).
        deadline = time.monotonic() + 10
        while _received(node) != 24:
            assert time.monotonic() < deadline, _received(node)
            time.sleep(0.5)
        node._process.send_signal(signal.SIGKILL)
        node._process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in receivers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in receivers), "receivers outlived the node"
    finally:
        node.stop()
        for pid in receivers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_stopped_node_stops_its_receivers_and_restarts_one_that_dies(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", scp__processes="2").start()
    receivers: list[int] = []
    try:
        [first] = receivers = node.receiver_pids(1)
        assert _readiness(node)["receivers"] == "2 of 2 processes receiving"
        os.kill(first, signal.SIGKILL)  # a receiver that dies is started again
        # /api/ready tells it (the restart waits 2 s), then the restart.
        seen = set()
        deadline = time.monotonic() + 60
        while len(re.findall(r"receiver process 1 started", node.log())) < 2:
            assert time.monotonic() < deadline, node.log()
            seen.add(_readiness(node)["receivers"])
            time.sleep(0.1)
        assert any(s.startswith("only 1 of 2 processes receiving") for s in seen), seen
        assert _readiness(node)["receivers"] == "2 of 2 processes receiving"
        [second] = re.findall(r"receiver process 1 started \(pid (\d+)", node.log())[1:]
        receivers.append(int(second))
        started = time.monotonic()
        node.stop()  # SIGTERM: the node and its receivers end, well within the grace time
        assert time.monotonic() - started < 30 and not node.running
        assert not any(_alive(pid) for pid in receivers)
        assert "restarting" not in node.log().split("signal 15 received")[-1], node.log()
    finally:
        node.stop()
        for pid in receivers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
