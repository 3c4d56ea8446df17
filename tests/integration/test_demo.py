"""`make demo` end to end: Orthanc as the PACS sends the bundled real CT study to the node
by C-STORE, and the enhanced series come back into the same study in Orthanc."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.dicom_checks import PHILIPS_TARBALL
from tests.integration.peers import ORTHANC_BINARY

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_sends_a_real_study_through_the_node_and_back(tmp_path: Path) -> None:
    if not Path(ORTHANC_BINARY).exists():
        pytest.skip("Orthanc is not installed (make test-deps)")
    if not PHILIPS_TARBALL.is_file():
        pytest.skip(f"shared data {PHILIPS_TARBALL} is absent")
    result = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "demo.py"), "--once", "--free-ports",
         "--preset", "ct-denoise-fast", "--work", str(tmp_path / "demo"),
         "--data-dir", str(PHILIPS_TARBALL.parent)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # Two axial series enhanced; the localizer and the exam summaries skipped, with reasons.
    assert out.count(" DONE ") == 2 and "SKIPPED" in out
    assert "2 enhanced series came back" in out
    # The QA gate passed both enhanced series (the job table's QA column).
    assert len(re.findall(r"\bDONE\s+pass\b", out)) == 2, out
