"""The Explorer page under Streamlit's AppTest, as its tests drive it: open it, let the jobs it queued finish, and
read the spec its hover component receives.

AppTest cannot run the component's JavaScript: a test sends what the browser would by setting ``MAP_KEY`` in the
session state.
"""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

ENTRY = Path(__file__).resolve().parents[2] / "dashboard.py"
PAGE = "pages/explorer.py"
MAP_KEY = "explorer-map"
RENDER_TIMEOUT_S = 120  # t-SNE of 2 x 136 points on a shared 2-core CPU, the first time


def open_explorer(*, wait_for_jobs: bool = True) -> AppTest:
    """The Explorer as a visitor opens it from Home; with ``wait_for_jobs``, once the jobs it queued are done."""
    at = AppTest.from_file(str(ENTRY), default_timeout=RENDER_TIMEOUT_S)
    at.run()
    at.switch_page(PAGE).run()
    assert_no_exception(at)
    return settle(at) if wait_for_jobs else at


def settle(at: AppTest) -> AppTest:
    """Wait for the jobs the page queued (maps, data health: the job runner computes them, not the page's thread),
    then rerun, as the page's live refresh does when the last one ends."""
    from ui.state import job_runner

    runner = job_runner()
    for _ in range(3):  # a map's job, then perhaps a health job the next rerun asks for
        active = [job for job in runner.jobs() if job.active]
        if not active:
            break
        for job in active:
            finished = runner.wait(job.id, timeout_s=RENDER_TIMEOUT_S)
            assert finished.status == "completed", (finished.title, finished.error)
        at.run()
        assert_no_exception(at)
    return at


def assert_no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def spec_of(at: AppTest) -> dict:
    """The hover component's spec as the browser receives it."""
    components = at.get("component_instance")
    assert len(components) == 1, f"expected one hover map, got {len(components)}"
    return json.loads(components[0].proto.json_args)["spec"]


def subheaders(at: AppTest) -> list[str]:
    return [str(element.value) for element in at.subheader]
