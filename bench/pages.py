"""Section 6, page render times with streamlit's AppTest, on a workspace populated with real runs.

Each page of the app's navigation (``ui.navigation.PAGES``) is rendered through dashboard.py (so the sidebar and
``st.navigation`` run too, and page links resolve) twice, each time as a new session: "cold" is the first
render in this process (module imports and empty ``st.cache_*``), "warm" the next one, which is what
a visitor of a running dashboard meets; the target applies to warm. A page file that does not exist
(yet) is reported as missing, and one that raises as an error, without stopping the bench.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .common import Context, Target, seconds

REPO = Path(__file__).resolve().parents[1]
RENDER_TIMEOUT_S = 120  # a generous cap so a slow page is measured instead of cut off


@contextmanager
def _workspace_env(root: Path) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in ("FLOWER_PROBE_WORKSPACE", "FLOWER_PROBE_DATA_ROOT")}
    os.environ["FLOWER_PROBE_WORKSPACE"] = str(root)
    os.environ.pop("FLOWER_PROBE_DATA_ROOT", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _populate(context: Context) -> int:
    """Completed runs in the bench workspace; makes one (EfficientNet-Lite0, pretrained) when there are none."""
    from core.probing.experiment import run_comparison
    from core.runs.registry import RunRegistry

    registry = RunRegistry(context.workspace.registry_path)
    if not registry.list_runs(status="completed"):
        context.dataset()
        run_comparison(dataset="synthetic", backbones=["efficientnet_lite0"], workspace=context.workspace)
    return len(registry.list_runs(status="completed"))


def _render(page: str) -> tuple[float, list[str]]:
    """Seconds a new session takes to render ``page`` through dashboard.py (sidebar and navigation included)."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=RENDER_TIMEOUT_S)
    app.switch_page(page)
    elapsed = seconds(app.run)
    return elapsed, [str(getattr(error, "message", error)) for error in app.exception]


def run(context: Context) -> tuple[dict, list[Target]]:
    from ui.navigation import PAGES

    pages = [entry.script for entry in PAGES]
    results: dict = {"completed_runs": _populate(context), "pages": {}}
    targets = []
    with _workspace_env(context.workspace.root):
        for page in pages:
            path = REPO / page
            if not path.is_file():
                results["pages"][page] = "missing"
                targets.append(Target(f"Page {page} renders", None, "<", 1, "s", "missing"))
                context.log(f"  page {page}: missing")
                continue
            try:
                cold, cold_errors = _render(page)
                warm, warm_errors = _render(page)
            except Exception as exc:  # a page that cannot even start is reported, not fatal to the bench
                results["pages"][page] = {"error": f"{type(exc).__name__}: {exc}"}
                targets.append(Target(f"Page {page} renders", None, "<", 1, "s", "error"))
                context.log(f"  page {page}: error {exc}")
                continue
            errors = cold_errors + warm_errors
            results["pages"][page] = {"cold_s": cold, "warm_s": warm, "errors": errors}
            targets.append(
                Target(
                    f"Page {page} renders (warm)",
                    None if errors else warm,
                    "<",
                    1,
                    "s",
                    "raised an error" if errors else "",
                )
            )
            context.log(
                f"  page {page}: cold {cold:.2f} s, warm {warm:.2f} s" + (f", errors: {errors}" if errors else "")
            )
    return results, targets
