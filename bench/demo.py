"""Section "demo": the offline demo as a new user meets it, from the click on Home to its two runs recorded.

A fresh workspace (nothing generated, nothing cached), the real server (``streamlit run dashboard.py``, as
``tests.helpers.browser`` starts it) and Debian's Chromium: Home is opened, the duration it promises before the click
is read, "Run the offline demo" is clicked, and the clock runs until the registry holds both completed runs
(the job lives in the server process: generating Synthetic Flowers, extracting EfficientNet-Lite0 features
with pretrained and with random weights, training both heads) and the page shows both runs recorded (the job card
lists the runs recorded so far, with a link to compare them), and on until the page shows the finished job (the
field's protocols on the same features: linear, logistic regression, k-NN, NCM) with its "Compare these runs" link.
Each run's own timings come from its record. One cold run is the figure (a second would find everything cached); the
load average is kept beside it. The clock watches the registry through one read-only connection, a few cheap
queries a second: opening a ``RunRegistry`` per poll (schema, migration and reconcile transactions, each fsynced)
cost the measured machine ~8 s of CPU per run, a fifth of what the demo itself needs.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from contextlib import closing

from .common import Context, Target, load_average

GOAL_S = 30.0  # issue 22 (issue 14 asked for 90): the offline demo's click-to-result on a 2-core AVX-512 CPU, idle
TIMEOUT_S = 1_200.0  # a loaded machine may need many times the goal; never wait forever
BUTTON = "Run the offline demo"
FINISHED_LINK = "Compare these runs"  # ui.jobs.job_outcome's link, drawn when the job has ended
RECORDED_SO_FAR = re.compile(r"Recorded so far: #\d+, #\d+")  # ui.jobs.job_card, once two runs are recorded


def _count_runs(connection: sqlite3.Connection | None, status: str) -> int:
    """How many of the fresh workspace's runs are in ``status``; none before the job has created its registry."""
    if connection is None:
        return 0
    try:
        return connection.execute("SELECT COUNT(*) FROM runs WHERE status=?", (status,)).fetchone()[0]
    except sqlite3.OperationalError:  # the job is creating the schema right now
        return 0


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def _read_only(registry_path) -> sqlite3.Connection | None:
    if not registry_path.is_file():
        return None
    return sqlite3.connect(f"file:{registry_path}?mode=ro", uri=True, timeout=5, isolation_level=None)


def run(context: Context) -> tuple[dict, list[Target]]:
    from playwright.sync_api import sync_playwright

    from tests.helpers.browser import CHROMIUM, launch_chromium, streamlit_server

    from .browser_pages import _Pending, settled_seconds

    if not CHROMIUM.is_file():
        return {"error": f"{CHROMIUM} is missing (apt-get install chromium)"}, []
    root = context.workspace_root / "demo-fresh"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    registry_path = root / "runs.sqlite"
    results: dict = {"workspace": str(root), "load_average_before": load_average()}
    with (
        streamlit_server(workspace_root=root, log_path=context.workspace_root / "demo-server.log") as server,
        sync_playwright() as playwright,
    ):
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            pending = _Pending(page)
            started = time.perf_counter()
            page.goto(server.url_for(""), wait_until="commit")
            results["home_settled_s"] = settled_seconds(page, pending, started=started)
            promise = page.get_by_text(re.compile("Expected duration")).first.inner_text()
            results["promised_before_click"] = promise
            page.get_by_role("button", name=BUTTON).click()
            clicked = time.perf_counter()
            connection, heads_done = None, False
            while time.perf_counter() - clicked < TIMEOUT_S and not _count_runs(connection, "failed"):
                connection = connection or _read_only(registry_path)
                if heads_done := _count_runs(connection, "completed") >= 2:
                    break
                time.sleep(0.25)
            click_to_recorded = time.perf_counter() - clicked
            if connection is not None:
                connection.close()
            click_to_result = job_done = None
            if heads_done:  # then what the page shows: both runs (or the finished job), then the job's end
                finished = page.get_by_role("link", name=FINISHED_LINK)
                left_ms = max(1.0, TIMEOUT_S - click_to_recorded) * 1e3
                page.get_by_text(RECORDED_SO_FAR).or_(finished).first.wait_for(timeout=left_ms)
                click_to_result = time.perf_counter() - clicked
                finished.wait_for(timeout=left_ms)
                job_done = time.perf_counter() - clicked
        finally:
            browser.close()
    with closing(sqlite3.connect(f"file:{registry_path}?mode=ro", uri=True)) as connection:
        connection.row_factory = sqlite3.Row
        runs = connection.execute("SELECT * FROM runs WHERE status='completed' ORDER BY id").fetchall()
        results["failed_runs"] = [r["id"] for r in connection.execute("SELECT id FROM runs WHERE status='failed'")]
    results["load_average_after"] = load_average()
    results["click_to_recorded_s"] = click_to_recorded if heads_done else None
    results["click_to_result_s"] = click_to_result
    results["click_to_job_done_s"] = job_done
    results["runs"] = [
        {
            "backbone": r["backbone"],
            "weights": r["weights"],
            "protocol": r["protocol"],
            "test_acc": r["test_acc"],
            "timings": json.loads(r["timings"] or "null"),
        }
        for r in runs
    ]
    context.log(
        f"  demo: click to both reference runs recorded {_seconds(results['click_to_recorded_s'])}, shown "
        f"{_seconds(click_to_result)}, to the finished job {_seconds(job_done)} ({len(runs)} runs completed), "
        f"promised: {promise!r}; load {results['load_average_before']} -> {results['load_average_after']}"
    )
    load = f"load {results['load_average_before'][0]:.1f} -> {results['load_average_after'][0]:.1f}"
    targets = [
        Target(
            "Offline demo, click to both reference runs shown (fresh workspace)",
            results["click_to_result_s"],
            "<",
            GOAL_S,
            "s",
            load,
        ),
        Target("Offline demo, click to the finished job (all protocols)", job_done, "<", GOAL_S, "s", load),
    ]
    return results, targets
