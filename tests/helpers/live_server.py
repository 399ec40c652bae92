"""The real Flower Probe server instrumented to count backbone builds, and page helpers, for the browser tests.

``live_server(workspace_root)`` is ``tests.helpers.browser.streamlit_server`` (``streamlit run dashboard.py`` on
a free localhost port, exactly as a user starts it) launched through a wrapper that only adds one
stderr line per backbone build, so a test can count how often the server loaded a model.
``open_page`` loads a page of ``PAGES`` and waits until it has rendered. The server and browser
basics (``REPO``, ``CHROMIUM``, ``CHROMIUM_ARGS``, ``launch_chromium``, ...) live in ``tests.helpers.browser``
and are re-exported here for the tests that import them from this module.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.helpers.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO,
    StreamlitServer,
    launch_chromium,
    streamlit_server,
    wait_for_app_idle,
)

__all__ = [
    "BUILD_MARK",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "PAGES",
    "REPO",
    "LiveServer",
    "exceptions_shown",
    "launch_chromium",
    "live_server",
    "open_page",
    "page_file",
    "wait_rendered",
]

BUILD_MARK = "[live-server] build_backbone "
# Pages as ui.navigation.PAGES names them: (URL path, text of the page's title).
PAGES = {
    "home": ("", "Flower Probe"),
    "dataset": ("dataset", "Dataset"),
    "train": ("train", "Train"),
    "compare": ("compare", "Compare"),
    "explorer": ("explorer", "Explorer"),
    "classify": ("classify", "Classify"),
}


def page_file(name: str) -> Path:
    """The script of page ``name`` (``"dataset"``), wherever the app's page table (``ui.navigation.PAGES``) says it
    lives."""
    from ui.navigation import PAGES as APP_PAGES

    return next(REPO / entry.script for entry in APP_PAGES if Path(entry.script).stem == name)


# Imported before the app, so every ``from .backbones import build_backbone`` binds the counting wrapper.
_WRAPPER = f"""
import sys
import core.backbones.registry as backbones
_build = backbones.build_backbone
def build_backbone(name, *args, **kwargs):
    # name@weights: one backbone under two weights (the offline demo's pair) is two models, rightly built twice.
    print({BUILD_MARK!r} + name + "@" + str(kwargs.get("weights", "pretrained")), file=sys.stderr, flush=True)
    return _build(name, *args, **kwargs)
backbones.build_backbone = build_backbone
from streamlit.web.cli import main
sys.argv = ["streamlit", *sys.argv[1:]]
sys.exit(main())
"""


@dataclass(frozen=True)
class LiveServer(StreamlitServer):
    """A ``StreamlitServer`` started through the build-counting wrapper."""

    def backbone_builds(self) -> list[str]:
        """The backbones the server has built so far as ``name@weights``, in order, one entry per build."""
        return [line[len(BUILD_MARK) :] for line in self.log().splitlines() if line.startswith(BUILD_MARK)]

    def rss_bytes(self) -> int:
        """The server process's resident memory now, in bytes."""
        return psutil.Process(self.process.pid).memory_info().rss


@contextlib.contextmanager
def live_server(
    workspace_root: Path, *, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 180
) -> Iterator[LiveServer]:
    """The dashboard served on 127.0.0.1:<free port> with ``FLOWER_PROBE_WORKSPACE=workspace_root``.

    ``log_path``, ``env`` and ``timeout_s`` are ``tests.helpers.browser.streamlit_server``'s; the longer
    default timeout leaves room for the wrapper, which imports ``core.backbones.registry`` (torch, timm) before
    the server answers.
    """
    with streamlit_server(
        workspace_root=workspace_root, log_path=log_path, env=env, timeout_s=timeout_s, launcher=("-c", _WRAPPER)
    ) as server:
        yield LiveServer(url=server.url, port=server.port, process=server.process, log_path=server.log_path)


def wait_rendered(page, title: str, *, timeout_s: float) -> None:
    """Wait for the page's title heading, then for the app's script run to end (``wait_for_app_idle``)."""
    page.get_by_role("heading", name=title).first.wait_for(state="visible", timeout=timeout_s * 1000)
    wait_for_app_idle(page, timeout_s=timeout_s)


def open_page(context, server: StreamlitServer, name: str, *, query: str = "", timeout_s: float = 120):
    """Open page ``name`` of ``PAGES`` in a new tab; returns (page, seconds until rendered)."""
    path, title = PAGES[name]
    page = context.new_page()
    started = time.perf_counter()
    page.goto(
        f"{server.url}/{path}{'?' + query if query else ''}", wait_until="domcontentloaded", timeout=timeout_s * 1000
    )
    wait_rendered(page, title, timeout_s=timeout_s)
    return page, time.perf_counter() - started


def exceptions_shown(page) -> list[str]:
    """The texts of the exception boxes the app shows in ``page`` (``[]`` when there are none)."""
    return page.locator('[data-testid="stException"]').all_inner_texts()
