"""Concurrent users: the real server under ten browser sessions at once while a job runs.

One session launches a comparison from the Train page (the job runner lives in the server process);
then ten headless Chromium sessions, driven from this process over localhost, open pages at the same
time. Every page must render without an exception, each backbone must be loaded a bounded number of
times however many sessions there are (the job's extraction, and the Classify page's predictor shared
through ``st.cache_resource``), and the server's memory must not grow with a second wave of sessions.
The figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter

import pytest

from core.runs import RunRegistry
from tests.live_server import CHROMIUM, CHROMIUM_ARGS, PAGES, LiveServer, live_server, wait_rendered

SESSIONS = 10  # the "at least 10 browser sessions"
PAGES_PER_SESSION = 3  # each session opens three pages, starting at a different one: every page five times
JOB_EPOCHS = 60  # with a fresh resnet50 extraction, keeps the job running through the first wave
RENDER_TIMEOUT_S = 240  # ten sessions and a job on two shared cores: slow, but never stuck
BUILDS_PER_BACKBONE = 2  # the job's extraction, and the Classify page's predictor (cached for every session)
# RSS the server may gain in a second wave of sessions once the first has warmed every cache: session
# state and websocket buffers only; a model or a dataset per session would be far more.
SECOND_WAVE_GROWTH_BYTES = 150 * 2**20


class MemorySampler:
    """Samples the server's resident memory every 0.2 s in a thread; ``peak`` is the largest seen."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.peak = server.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.server.rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _render(page, title: str) -> None:
    wait_rendered(page, title, timeout_s=RENDER_TIMEOUT_S)


async def _session(browser, server: LiveServer, index: int) -> list[tuple[str, float, list[str]]]:
    """One user: a fresh browser context (its own Streamlit session) opening pages one after another."""
    names = list(PAGES)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    results = []
    try:
        page = await context.new_page()
        for k in range(PAGES_PER_SESSION):
            name = names[(index + k) % len(names)]
            path, title = PAGES[name]
            started = time.perf_counter()
            await page.goto(f"{server.url}/{path}", wait_until="domcontentloaded", timeout=RENDER_TIMEOUT_S * 1000)
            await page.get_by_role("heading", name=title).first.wait_for(state="visible", timeout=RENDER_TIMEOUT_S * 1000)
            await _until_quiet(page)
            seconds = time.perf_counter() - started
            errors = await page.locator('[data-testid="stException"]').all_inner_texts()
            results.append((name, seconds, errors))
    finally:
        await context.close()
    return results


async def _until_quiet(page) -> None:
    running = page.locator('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]')
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    quiet_since = None
    while time.monotonic() < deadline:
        if await running.count():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.5:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the page kept running")


async def _wave(server: LiveServer) -> list[tuple[str, float, list[str]]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            per_session = await asyncio.gather(*(_session(browser, server, i) for i in range(SESSIONS)))
        finally:
            await browser.close()
    return [result for session in per_session for result in session]


def _launch_job(server: LiveServer) -> None:
    """Launch the Train page's default comparison (efficientnet_lite0 and random resnet50 offline) as a user does."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/{PAGES['train'][0]}", wait_until="domcontentloaded")
            _render(page, PAGES["train"][1])
            epochs = page.get_by_label("Epochs")
            epochs.fill(str(JOB_EPOCHS))
            epochs.press("Enter")
            _render(page, PAGES["train"][1])
            page.get_by_role("button", name="Launch").click()
            page.get_by_text("Queued as job").wait_for(timeout=60_000)
        finally:
            browser.close()


def _summary(results: list[tuple[str, float, list[str]]]) -> str:
    worst = max(results, key=lambda r: r[1])
    return f"{len(results)} pages rendered, worst {worst[1]:.1f} s ({worst[0]})"


@pytest.mark.slow
def test_ten_sessions_at_once_while_a_job_runs(tmp_path, populated_root):
    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    for cache in (root / "features").glob("*resnet50*.npz"):
        cache.unlink()  # the job then really runs resnet50 over the dataset while the sessions load pages
    registry = RunRegistry(root / "runs.sqlite")
    runs_before = len(registry.list_runs(status="completed"))

    with live_server(root, log_path=tmp_path / "server.log") as server:
        _launch_job(server)
        rss_start = server.rss_bytes()
        sampler = MemorySampler(server)
        job_running_at_start = bool(RunRegistry(root / "runs.sqlite").list_runs(status="running"))
        started = time.perf_counter()
        first = asyncio.run(_wave(server))
        first_wave_s = time.perf_counter() - started
        job_running_at_end = bool(RunRegistry(root / "runs.sqlite").list_runs(status="running"))
        rss_first = server.rss_bytes()

        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while RunRegistry(root / "runs.sqlite").list_runs(status="running") and time.monotonic() < deadline:
            time.sleep(1)
        second = asyncio.run(_wave(server))
        rss_second = server.rss_bytes()
        peak = sampler.stop()
        builds = Counter(server.backbone_builds())

    print(
        f"\nload test: {SESSIONS} sessions x {PAGES_PER_SESSION} pages, two waves"
        f"\n  first wave (job running at start: {job_running_at_start}, at end: {job_running_at_end}): "
        f"{_summary(first)}, {first_wave_s:.0f} s in all"
        f"\n  second wave: {_summary(second)}"
        f"\n  backbone builds in the server: {dict(builds)}"
        f"\n  server RSS: {rss_start / 2**20:.0f} MiB after launching the job, {rss_first / 2**20:.0f} MiB after wave 1, "
        f"{rss_second / 2**20:.0f} MiB after wave 2, peak {peak / 2**20:.0f} MiB"
    )
    assert job_running_at_start, "the job had already finished: the sessions did not load pages while it ran"
    for name, seconds, errors in first + second:
        assert errors == [], f"{name} showed an exception: {errors}"
    rendered = Counter(name for name, _, _ in first)
    assert set(rendered) == set(PAGES) and sum(rendered.values()) == SESSIONS * PAGES_PER_SESSION
    assert builds and max(builds.values()) <= BUILDS_PER_BACKBONE, f"a backbone was loaded per session: {dict(builds)}"
    assert rss_second - rss_first < SECOND_WAVE_GROWTH_BYTES, "the server's memory grows with every wave of sessions"
    new_runs = RunRegistry(root / "runs.sqlite").list_runs(status="completed")
    assert len(new_runs) == runs_before + 2, "the job's two runs did not both complete under load"
