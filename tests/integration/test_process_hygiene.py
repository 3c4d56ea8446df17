"""Process hygiene: `pacs-node serve` killed with SIGKILL leaves no embedded worker behind."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.integration.node import NodeProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc (Linux)"),
]


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_node_takes_its_embedded_worker_with_it(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node").start()
    process = node._process
    assert process is not None
    deadline = time.monotonic() + 60
    worker = None
    while worker is None and time.monotonic() < deadline:
        match = re.search(r"embedded worker started \(pid (\d+)", node.log())
        worker = int(match.group(1)) if match else None
        time.sleep(0.2)
    assert worker is not None, node.log()
    family = {worker} | _descendants(worker)
    try:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = sorted(pid for pid in family if _alive(pid))
        assert not left, f"orphans after the node was killed: {left}\n{node.log()}"
    finally:
        for pid in family:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
