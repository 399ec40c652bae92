"""Shared helpers for real-browser tests: the dashboard served on a free port, and Debian's Chromium.

Typical use in a test module (mark such tests ``@pytest.mark.slow``)::

    from tests.helpers.browser import chromium_page, require_chromium, streamlit_server, wait_for_app_idle

    @pytest.fixture
    def server(populated_workspace, tmp_path):
        require_chromium()
        with streamlit_server(workspace_root=populated_workspace.root, log_path=tmp_path / "server.log") as running:
            yield running  # stopped when the test ends, passed or failed

    def test_something(server):
        with chromium_page() as page:  # the browser closes when the block ends, passed or failed
            page.goto(server.url_for("explorer"))
            wait_for_app_idle(page, timeout_s=60)

Chromium comes from Debian (``/usr/bin/chromium``; ``.ci/run`` installs it) because Playwright cannot
download its own browser here. Without it the tests skip locally and fail in CI (``CI=true``), so a
CI machine that lost its browser cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"  # gitignored: screenshots and logs a person may want to look at
CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: CI containers run as root, where Chromium's sandbox refuses to start. The rest keep a
# headless browser from reaching out to Google's services (there is no network here) or the GPU.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# Variables of the test process that would change what the served app does; a test passes its own in ``env``.
_INHERITED_OUT = ("FLOWER_PROBE_DATA_ROOT", "FLOWER_PROBE_PASSWORD")
_LOG_TAIL_CHARS = 4_000  # of the server log, quoted in failure messages


def require_chromium() -> None:
    """Skip the calling test when Chromium is missing; in CI (``CI=true``) fail instead, saying how to install it."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    message = (
        f"{CHROMIUM} is missing: the real-browser tests need Debian's Chromium "
        "(apt-get install chromium; .ci/run does this)."
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class StreamlitServer:
    """A running ``streamlit run`` subprocess; ``log_path`` holds its stdout and stderr."""

    url: str  # http://127.0.0.1:<port>, no trailing slash
    port: int
    process: subprocess.Popen
    log_path: Path

    def url_for(self, path: str = "") -> str:
        """The URL of a page: ``path`` is the page's ``url_path`` in ``st.navigation`` (``""`` for the default page)."""
        return f"{self.url}/{path.lstrip('/')}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self) -> str:
        return self.log()[-_LOG_TAIL_CHARS:]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen, *, grace_s: float) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace_s)


@contextlib.contextmanager
def streamlit_server(
    *,
    workspace_root: str | os.PathLike,
    log_path: str | os.PathLike,
    script: str = "dashboard.py",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    launcher: Sequence[str] = ("-m", "streamlit"),
) -> Iterator[StreamlitServer]:
    """Serve ``script`` with ``FLOWER_PROBE_WORKSPACE=workspace_root`` on a free localhost port; stop it on exit.

    The server starts as a user starts it (``streamlit run`` in the repository, so the same
    ``.streamlit/config.toml``), bound to 127.0.0.1. It is ready when ``/_stcore/health`` answers
    ``ok``; the first page load still runs the page script.

    Parameters
    ----------
    workspace_root : path-like
        The workspace the app uses.
    log_path : path-like
        File for the server's output (put it under ``tmp_path``; quoted when start-up fails).
    script : str
        Entry script, relative to the repository root.
    env : mapping or None
        Extra environment variables (e.g. ``FLOWER_PROBE_PASSWORD``); the test process's
        ``FLOWER_PROBE_DATA_ROOT`` and ``FLOWER_PROBE_PASSWORD`` are not passed on otherwise.
    timeout_s : float
        Longest wait for the health check (start-up imports torch: seconds on a busy machine).
    launcher : sequence of str
        The Python arguments that start Streamlit's command line, before ``run <script> ...``: a test
        that instruments the server passes ``("-c", code)``, where ``code`` ends by calling
        ``streamlit.web.cli.main`` on the arguments that follow (see ``tests/helpers/live_server.py``).

    Raises
    ------
    RuntimeError
        The server exited or did not answer within ``timeout_s``; the message quotes its log.
    """
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if name not in _INHERITED_OUT}
    environment.update({"FLOWER_PROBE_WORKSPACE": str(workspace_root), "PYTHONUNBUFFERED": "1", **(env or {})})
    command = [
        sys.executable,
        *launcher,
        "run",
        script,
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    log_path = Path(log_path)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = StreamlitServer(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(server.url):
            if process.poll() is not None:
                raise RuntimeError(
                    f"streamlit exited with status {process.returncode} before answering; its log:\n{server.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"streamlit did not answer {server.url}/_stcore/health within {timeout_s:.0f} s; "
                    f"its log:\n{server.log_tail()}"
                )
            time.sleep(0.25)
        yield server
    finally:
        _stop(process, grace_s=10)


def launch_chromium(playwright, *, extra_args: tuple[str, ...] = (), **options):
    """Debian's Chromium, headless, through Playwright (``playwright`` is ``sync_playwright()``'s value).

    ``extra_args`` are added to ``CHROMIUM_ARGS``; ``options`` go to ``playwright.chromium.launch``.
    """
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, *extra_args], **options)


@contextlib.contextmanager
def chromium_page(**page_options) -> Iterator:
    """A new page of ``launch_chromium``'s browser, which closes on exit, passed or failed; ``page_options`` go to
    ``browser.new_page`` (``viewport=...``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser.new_page(**page_options)
        finally:
            browser.close()


def wait_for_app_idle(page, *, timeout_s: float, quiet_s: float = 0.5) -> None:
    """Wait until the Streamlit app in ``page`` has finished its script run and stayed idle ``quiet_s`` seconds.

    Streamlit's app root carries ``data-test-script-state`` (``initial`` before the first run,
    ``running``, ``notRunning``, ...); the quiet period lets a rerun that a component or widget
    requests right after a run start before this returns.
    """
    idle = page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        if not idle.count():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.1)
    state = (
        page.locator('[data-testid="stApp"]').first.get_attribute("data-test-script-state")
        if page.locator('[data-testid="stApp"]').count()
        else None
    )
    raise TimeoutError(f"the app at {page.url} was not idle after {timeout_s:.0f} s (script state {state!r})")


def component_frame(page, title: str, *, timeout_s: float):
    """The loaded frame of custom component ``title`` (its iframe's title, e.g. ``ui.hover_scatter.FRAME_TITLE``).

    The iframe is looked up afresh on every try: Streamlit may replace it while a rerun settles.
    """
    iframe = page.locator(f'iframe[title="{title}"]').first
    iframe.wait_for(state="attached", timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    frame = None
    while time.monotonic() < deadline:
        handle = iframe.element_handle(timeout=timeout_s * 1000)
        frame = handle.content_frame() if handle else None
        if frame is not None and f"/component/{title}/" in frame.url:
            return frame
        time.sleep(0.1)
    src = iframe.get_attribute("src") if iframe.count() else None
    raise TimeoutError(
        f"component {title!r}: its iframe (src {src!r}) did not load within {timeout_s:.0f} s "
        f"(frame URL {frame.url if frame else None!r})"
    )


def artifact_path(name: str) -> Path:
    """``test-artifacts/<name>`` (folders created): where screenshots go so a person can look at them."""
    path = ARTIFACTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
