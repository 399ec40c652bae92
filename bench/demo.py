"""Section "demo": the offline demo as a new user meets it, from the click on Home to its two runs recorded.

A fresh workspace (nothing generated, nothing cached), the real server (``streamlit run dashboard.py``, as
``tests.helpers.browser`` starts it) and Debian's Chromium: Home is opened, the duration it promises before the click
is read, "Run the offline demo" is clicked, and the clock runs until the registry holds both completed runs
(the job lives in the server process: generating Synthetic Flowers, extracting EfficientNet-Lite0 features
with pretrained and with random weights, training both heads). Each run's own timings come from its record.
One cold run is the figure (a second would find everything cached); the load average is kept beside it.
"""

from __future__ import annotations

import re
import shutil
import time

from .common import Context, Target, load_average

GOAL_S = 90.0  # issue 14: the offline demo's click-to-result on this 2-core CPU, idle
TIMEOUT_S = 1_200.0  # a loaded machine may need many times the goal; never wait forever
BUTTON = "Run the offline demo"


def _runs(registry_path, status: str) -> list[dict]:
    """The fresh workspace's runs in ``status``; none before the job has created its registry."""
    from core.runs.registry import RunRegistry

    return RunRegistry(registry_path).list_runs(status=status) if registry_path.is_file() else []


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
            while len(_runs(registry_path, "completed")) < 2 and time.perf_counter() - clicked < TIMEOUT_S:
                if _runs(registry_path, "failed"):
                    break
                time.sleep(0.25)
            click_to_result = time.perf_counter() - clicked
        finally:
            browser.close()
    runs = _runs(registry_path, "completed")
    results["load_average_after"] = load_average()
    results["failed_runs"] = [r["id"] for r in _runs(registry_path, "failed")]
    results["click_to_result_s"] = click_to_result if len(runs) == 2 else None
    results["runs"] = [
        {
            "backbone": r["backbone"],
            "weights": r["weights"],
            "test_acc": r["test_acc"],
            "n_images": r.get("n_images"),
            "timings": r.get("timings"),
        }
        for r in runs
    ]
    context.log(
        f"  demo: click to result {click_to_result:.1f} s ({len(runs)} runs completed), promised: {promise!r}; "
        f"load {results['load_average_before']} -> {results['load_average_after']}"
    )
    target = Target(
        "Offline demo, click to result (fresh workspace)",
        results["click_to_result_s"],
        "<",
        GOAL_S,
        "s",
        f"load {results['load_average_before'][0]:.1f} -> {results['load_average_after'][0]:.1f}",
    )
    return results, [target]
