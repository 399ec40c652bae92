"""Live job views in Debian's Chromium: an idle page reruns nothing on a timer; a launched job's card moves on its
own while the job runs, and shows the finished job without a click (``ui.jobs.live_jobs``).

The server is ``streamlit run dashboard.py`` on a copy of the session's populated workspace (the job adds runs).
"""

from __future__ import annotations

import re
import shutil
import time

import pytest

from tests.helpers.browser import require_chromium, wait_for_app_idle
from tests.helpers.live_server import PAGES, launch_chromium, live_server, wait_rendered
from ui.jobs import IDLE_REFRESH_S, SIDEBAR_REFRESH_S

pytestmark = pytest.mark.slow

QUIET_WATCH_S = 5.0  # several of the old 1-2 s timers' reruns; far from the idle refresh (IDLE_REFRESH_S)
JOB_EPOCHS = 1000  # the most the page allows: two heads on cached features, several of the card's redraws long
WAIT_S = 240  # a shared 2-core machine

# Counts the app's script runs (full or fragment) from now on, in window.__runs.
_COUNT_RUNS_JS = """() => {
  window.__runs = 0;
  const app = document.querySelector('[data-testid="stApp"]');
  let last = app.getAttribute('data-test-script-state');
  new MutationObserver(() => {
    const now = app.getAttribute('data-test-script-state');
    if (now === 'running' && last !== 'running') window.__runs += 1;
    last = now;
  }).observe(app, {attributes: true});
}"""


def test_idle_pages_stay_quiet_and_a_job_card_lives_until_it_finishes(tmp_path, populated_root):
    require_chromium()
    assert QUIET_WATCH_S < IDLE_REFRESH_S and SIDEBAR_REFRESH_S + 1.0 < IDLE_REFRESH_S
    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    from playwright.sync_api import sync_playwright

    with live_server(root, log_path=tmp_path / "server.log") as server, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{server.url}/{PAGES['train'][0]}", wait_until="domcontentloaded")
            wait_rendered(page, PAGES["train"][1], timeout_s=WAIT_S)

            page.evaluate(_COUNT_RUNS_JS)
            page.wait_for_timeout(QUIET_WATCH_S * 1000)
            assert page.evaluate("window.__runs") == 0, "an idle page reran on a timer"

            epochs = page.get_by_label("Epochs")
            epochs.fill(str(JOB_EPOCHS))
            epochs.press("Enter")
            wait_rendered(page, PAGES["train"][1], timeout_s=WAIT_S)
            page.get_by_role("button", name="Launch").click()
            job_id = int(re.search(r"Queued as job (\d+)", page.get_by_text("Queued as job").inner_text()).group(1))
            card = page.get_by_text(re.compile(rf"Job {job_id}: .* · (queued|running|completed)"))

            # While it runs, the card's progress text changes with no user action (the fragment reruns itself every
            # ui.jobs.JOB_REFRESH_S): two different texts, the second drawn by a redraw nobody asked for.
            seen: set[str] = set()
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and len(seen) < 2:
                if "· completed" in card.first.inner_text():
                    break
                bars = page.locator('[data-testid="stProgress"]').all_inner_texts()
                seen.update(text for text in bars if text)
                page.wait_for_timeout(250)
            assert len(seen) >= 2, f"the running job's progress did not move on its own: {seen}"

            # When it finishes, the page shows so without a click, then goes quiet again.
            page.get_by_text(re.compile(rf"Job {job_id}: .* · completed")).first.wait_for(timeout=WAIT_S * 1000)
            # The page's one rerun on the change (the fragment's interval changes with it) ends, then quiet for longer
            # than the slowest live timer (the sidebar's), so a redraw that timer set while the job ran has come and
            # gone; on a loaded machine that rerun can outlast a fixed wait. A page still rerunning on a timer never
            # gets there and fails here.
            wait_for_app_idle(page, timeout_s=WAIT_S, quiet_s=SIDEBAR_REFRESH_S + 1.0)
            page.evaluate(_COUNT_RUNS_JS)
            page.wait_for_timeout(QUIET_WATCH_S * 1000)
            assert page.evaluate("window.__runs") == 0, "the page kept rerunning after the job finished"
            assert not page.locator('[data-testid="stException"]').count()
        finally:
            browser.close()
