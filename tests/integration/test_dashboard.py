"""The dashboard in real headless Chromium (Playwright): log in, see a finished job, open the
viewer, scroll a slice, switch a window preset, retry a failed job. Screenshots are kept in
``test-artifacts/dashboard/``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacs_node.settings import REPO_ROOT
from tests.helpers.synthetic import make_ct_series
from tests.integration.node import NodeProcess
from tests.integration.peers import storescu

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO_ROOT / "test-artifacts" / "dashboard"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian chromium not installed (make test installs it)"
    ),
    pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk not installed"),
]


@pytest.fixture()
def node_with_jobs(tmp_path: Path) -> Iterator[tuple[NodeProcess, dict[str, int], str]]:
    """A node with one DONE job (gaussian preset, 6 slices) and one FAILED job."""
    make_ct_series(tmp_path / "good", n_slices=6, rows=64, cols=64, noise_hu=25.0,
                   series_description="Good series")  # fmt: skip
    bad = make_ct_series(tmp_path / "bad", n_slices=2, rows=64, cols=64, series_number=7,
                         series_description="Broken series")  # fmt: skip
    odd = make_ct_series(None, n_slices=1, rows=32, cols=32, study_uid=str(bad[0].StudyInstanceUID),
                         series_uid=str(bad[0].SeriesInstanceUID), series_number=7,
                         series_description="Broken series")[0]  # fmt: skip
    odd.ImagePositionPatient = [0.0, 0.0, 200.0]
    odd.save_as(tmp_path / "bad" / "odd.dcm", enforce_file_format=True)
    with NodeProcess(tmp_path / "node", preset="gaussian") as node:
        for folder in ("good", "bad"):
            assert storescu(tmp_path / folder, node.port, "ENHANCE", scan_dir=True).returncode == 0
        jobs = {j["series_description"]: j for j in node.wait_until_finished(2)}
        assert (
            jobs["Good series"]["status"] == "DONE" and jobs["Broken series"]["status"] == "FAILED"
        )
        created = node.cli("tokens", "create", "admin-ui", "--role", "admin", "--json")
        token = json.loads(created.stdout)["token"]
        yield (
            node,
            {"done": jobs["Good series"]["id"], "failed": jobs["Broken series"]["id"]},
            token,
        )


def test_login_viewer_window_scroll_and_retry(
    node_with_jobs: tuple[NodeProcess, dict[str, int], str],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    node, jobs, token = node_with_jobs
    base = f"http://127.0.0.1:{node.http_port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # Not logged in: every page leads to the login form; a wrong token is refused.
        page.goto(f"{base}/ui/")
        expect(page).to_have_url(f"{base}/ui/login")
        page.fill("#token", "pn_not-a-token")
        page.click("#login")
        expect(page.locator("#message")).to_have_text("Invalid or revoked token")
        page.fill("#token", token)
        page.click("#login")
        expect(page).to_have_url(f"{base}/ui/")
        expect(page.locator("#who")).to_have_text("admin-ui (admin)")
        done_row = page.locator(f"#jobs tr[data-job='{jobs['done']}']")
        expect(done_row).to_contain_text("DONE")
        expect(page.locator(f"#jobs tr[data-job='{jobs['failed']}']")).to_contain_text("FAILED")
        page.screenshot(path=str(ARTIFACTS / "jobs.png"))

        # The finished job and its viewer.
        done_row.locator("a").click()
        expect(page).to_have_url(f"{base}/ui/jobs/{jobs['done']}")
        expect(page.locator("#status")).to_have_text("DONE")
        source, derived = page.locator("#source"), page.locator("#derived")
        expect(page.locator("#slice-label")).to_have_text("4 / 6")
        page.wait_for_function("document.getElementById('derived').naturalWidth === 64")
        before = derived.get_attribute("src")
        page.locator(".viewer").hover()
        page.mouse.wheel(0, 120)  # scroll one slice forward
        expect(page.locator("#slice-label")).to_have_text("5 / 6")
        assert derived.get_attribute("src") != before
        assert "/source/4.png" in (source.get_attribute("src") or "")
        slices = f"/api/jobs/{jobs['done']}/slices"
        loaded = (
            "(id) => document.getElementById(id).complete"
            " && document.getElementById(id).naturalWidth === 64"
        )
        page.click("button[data-window='lung']")
        expect(source).to_have_attribute("src", f"{slices}/source/4.png?window=lung")
        page.wait_for_function(loaded, arg="source")
        page.check("#difference")
        expect(derived).to_have_attribute("src", f"{slices}/difference/4.png?window=lung")
        page.wait_for_function(loaded, arg="derived")
        page.screenshot(path=str(ARTIFACTS / "viewer.png"))

        page.goto(f"{base}/ui/stats")
        expect(page.locator("#throughput rect").first).to_be_visible()
        expect(page.locator("#failures")).to_contain_text("invalid_series")
        page.screenshot(path=str(ARTIFACTS / "stats.png"))

        # Retry the failed job from its page.
        page.goto(f"{base}/ui/jobs/{jobs['failed']}")
        expect(page.locator("#error")).to_contain_text("pixels differs from")
        page.click("#retry")
        expect(page.locator("#action-result")).to_have_text("queued again")
        page.screenshot(path=str(ARTIFACTS / "retry.png"))
        browser.close()
    events = node.job(jobs["failed"])["events"]
    assert any(e["message"] == "retry requested by admin-ui" and e["actor"] == "admin-ui"
               for e in events)  # fmt: skip
