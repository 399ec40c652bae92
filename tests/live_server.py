"""A real Flower Probe server and headless Chromium, for the browser tests (security, load).

``live_server(workspace_root)`` runs ``streamlit run dashboard.py`` on a free localhost port, exactly
as a user starts it (same config file, same entry), in a wrapper that only adds one stderr line per
backbone build, so a test can count how often the server loaded a model. ``launch_chromium`` starts
Debian's Chromium through Playwright; ``open_page`` loads a page and waits until it has rendered.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
]
BUILD_MARK = "[live-server] build_backbone "
# Pages as dashboard.py names them: (URL path, text of the page's title).
PAGES = {"home": ("", "Flower Probe"), "dataset": ("dataset", "Dataset"), "train": ("train", "Train"),
         "compare": ("compare", "Compare"), "explorer": ("explorer", "Explorer"), "classify": ("classify", "Classify")}



def page_file(name: str) -> Path:
    """The script of page ``name`` (``"dataset"``), wherever dashboard.py's ``st.Page`` calls say it lives."""
    scripts = re.findall(r'st\.Page\(\s*"([^"]+\.py)"', (REPO / "dashboard.py").read_text())
    return next(REPO / script for script in scripts if Path(script).stem == name)


# Imported before the app, so every ``from .backbones import build_backbone`` binds the counting wrapper.
_WRAPPER = f"""
import sys
import core.backbones as backbones
_build = backbones.build_backbone
def build_backbone(name, *args, **kwargs):
    print({BUILD_MARK!r} + name, file=sys.stderr, flush=True)
    return _build(name, *args, **kwargs)
backbones.build_backbone = build_backbone
from streamlit.web.cli import main
sys.argv = ["streamlit", *sys.argv[1:]]
sys.exit(main())
"""


@dataclass
class LiveServer:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def backbone_builds(self) -> list[str]:
        return [line[len(BUILD_MARK):] for line in self.log.splitlines() if line.startswith(BUILD_MARK)]

    def rss_bytes(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(workspace_root: Path, *, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 180) -> Iterator[LiveServer]:
    """The dashboard served on 127.0.0.1:<free port> with ``FLOWER_PROBE_WORKSPACE=workspace_root``."""
    port = free_port()
    environment = {**os.environ, "FLOWER_PROBE_WORKSPACE": str(workspace_root), "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("FLOWER_PROBE_DATA_ROOT", None)
    command = [sys.executable, "-c", _WRAPPER, "run", "dashboard.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as response:
                    if response.read() == b"ok":
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {timeout_s} s:\n{server.log}")
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def wait_rendered(page, title: str, *, timeout_s: float) -> None:
    """Wait for the page's title, then for the script run to end (the status widget stops saying Running)."""
    page.get_by_role("heading", name=title).first.wait_for(state="visible", timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        running = page.locator('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.5:
            return
        time.sleep(0.1)
    raise TimeoutError(f"page {title!r} still running after {timeout_s} s")


def open_page(context, server: LiveServer, name: str, *, query: str = "", timeout_s: float = 120):
    """Open page ``name`` of ``PAGES`` in a new tab; returns (page, seconds until rendered)."""
    path, title = PAGES[name]
    page = context.new_page()
    started = time.perf_counter()
    page.goto(f"{server.url}/{path}{'?' + query if query else ''}", wait_until="domcontentloaded", timeout=timeout_s * 1000)
    wait_rendered(page, title, timeout_s=timeout_s)
    return page, time.perf_counter() - started


def exceptions_shown(page) -> list[str]:
    return page.locator('[data-testid="stException"]').all_inner_texts()
