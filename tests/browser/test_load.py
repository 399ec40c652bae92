"""Concurrent users: the real server under ten browser sessions at once while a job runs.

One browser session first opens every page once (so the caches every user shares are warm), then
launches a comparison from the Train page (the job runner lives in the server process); while it
trains, ten headless Chromium sessions, driven from this process over localhost, open pages at the
same time. Every page must render without an exception, the backbone must be loaded once for all
sessions (the Classify page keeps one per backbone in ``st.cache_resource``, even as the job adds runs on it), and
the job's runs must complete. Then, the job done and the shared caches warm again, a second wave of ten sessions
may grow the server's memory only by a small, bounded amount per session. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter

import pytest

from core.runs.registry import RunRegistry
from tests.helpers.live_server import CHROMIUM, CHROMIUM_ARGS, PAGES, LiveServer, live_server, wait_rendered

SESSIONS = 10  # the "at least 10 browser sessions"
PAGES_PER_SESSION = 1  # session i opens page i (mod 6): all six pages, four of them twice, at the same moment
JOB_EPOCHS = 150  # two heads on cached features: keeps the job training while the sessions arrive
RENDER_TIMEOUT_S = 240  # ten sessions and a job on two shared cores: slow, but never stuck
# What one more session may cost the server: its session state and websocket buffers, a few MB. A model,
# dataset or t-SNE map per session would be tens to hundreds of MB each.
GROWTH_PER_SESSION_BYTES = 25 * 2**20


class MemorySampler:
    """Samples the server's resident memory every 0.25 s in a thread; ``peak`` is the largest seen."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.peak = server.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self.server.rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


async def _until_quiet(page) -> None:
    """The async twin of tests.helpers.browser.wait_for_app_idle: the app root reports its script state."""
    idle = page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')
    deadline = time.monotonic() + RENDER_TIMEOUT_S
    quiet_since = None
    while time.monotonic() < deadline:
        if not await idle.count():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.5:
            return
        await asyncio.sleep(0.25)
    raise TimeoutError("the page kept running")


async def _session(browser, server: LiveServer, index: int) -> list[tuple[str, float, list[str]]]:
    """One user: a fresh browser context (its own Streamlit session) opening pages one after another."""
    names = list(PAGES)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    results = []
    try:
        page = await context.new_page()
        for k in range(PAGES_PER_SESSION):
            name = names[(index + k * len(names) // PAGES_PER_SESSION) % len(names)]
            path, title = PAGES[name]
            started = time.perf_counter()
            await page.goto(f"{server.url}/{path}", wait_until="domcontentloaded", timeout=RENDER_TIMEOUT_S * 1000)
            await page.get_by_role("heading", name=title).first.wait_for(
                state="visible", timeout=RENDER_TIMEOUT_S * 1000
            )
            await _until_quiet(page)
            seconds = time.perf_counter() - started
            results.append((name, seconds, await page.locator('[data-testid="stException"]').all_inner_texts()))
    finally:
        await context.close()
    return results


async def _wave(server: LiveServer) -> list[tuple[str, float, list[str]]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            per_session = await asyncio.gather(*(_session(browser, server, i) for i in range(SESSIONS)))
        finally:
            await browser.close()
    return [result for session in per_session for result in session]


def _visit_every_page(page, server: LiveServer) -> list[tuple[str, float, list[str]]]:
    results = []
    for name, (path, title) in PAGES.items():
        started = time.perf_counter()
        page.goto(f"{server.url}/{path}", wait_until="domcontentloaded")
        wait_rendered(page, title, timeout_s=RENDER_TIMEOUT_S)
        results.append(
            (name, time.perf_counter() - started, page.locator('[data-testid="stException"]').all_inner_texts())
        )
    return results


def _open_every_page(server: LiveServer, *, launch_job: bool = False) -> list[tuple[str, float, list[str]]]:
    """One user opens every page (warming the caches all users share); with ``launch_job`` the user then
    launches the Train page's default comparison with more epochs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            results = _visit_every_page(page, server)
            if launch_job:
                page.goto(f"{server.url}/{PAGES['train'][0]}", wait_until="domcontentloaded")
                wait_rendered(page, PAGES["train"][1], timeout_s=RENDER_TIMEOUT_S)
                epochs = page.get_by_label("Epochs")
                epochs.fill(str(JOB_EPOCHS))
                epochs.press("Enter")
                wait_rendered(page, PAGES["train"][1], timeout_s=RENDER_TIMEOUT_S)
                page.get_by_role("button", name="Launch").click()
                page.get_by_text("Queued as job").wait_for(timeout=RENDER_TIMEOUT_S * 1000)
        finally:
            browser.close()
    return results


def _running_runs(root) -> int:
    """Comparisons and suites running now: a comparison is a group of runs, each recorded when it completes."""
    return sum(group["status"] == "running" for group in RunRegistry(root / "runs.sqlite").list_groups())


@pytest.mark.slow
def test_ten_sessions_at_once_while_a_job_runs(tmp_path, populated_root):
    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    completed_before = len(RunRegistry(root / "runs.sqlite").list_runs(status="completed"))

    with live_server(root, log_path=tmp_path / "server.log") as server:
        warm_up = _open_every_page(server, launch_job=True)
        # The job prepares its dataset before it opens its group: start the wave once the group is running.
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while not _running_runs(root) and time.monotonic() < deadline:
            time.sleep(0.2)
        builds_warm = Counter(server.backbone_builds())
        sampler = MemorySampler(server)
        running_at_start = _running_runs(root)
        started = time.perf_counter()
        wave = asyncio.run(_wave(server))
        wave_s = time.perf_counter() - started
        running_at_end = _running_runs(root)
        peak = sampler.stop()
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while _running_runs(root) and time.monotonic() < deadline:
            time.sleep(1)
        # Memory per session is measured on a second wave once nothing shared can change: the job has finished,
        # and one user has opened every page again (a run the job finished may have become Classify's default,
        # a new model for the server's one shared cache). The first wave also grew the allocator's per-thread
        # arenas to ten scripts at once; the second reuses them, so what it adds is what sessions keep.
        warm_again = _open_every_page(server)
        rss_before = server.rss_bytes()
        second_wave = asyncio.run(_wave(server))
        rss_after = server.rss_bytes()
        builds = Counter(server.backbone_builds())

    worst = max(wave, key=lambda r: r[1])
    print(
        f"\nload test: {SESSIONS} browser sessions at once, {PAGES_PER_SESSION} page(s) each, while a job trained "
        f"(runs running at the start / end of the wave: {running_at_start} / {running_at_end})"
        f"\n  pages rendered: {len(wave)} of {SESSIONS * PAGES_PER_SESSION} in {wave_s:.0f} s, "
        f"worst {worst[1]:.1f} s ({worst[0]}), "
        f"median {sorted(r[1] for r in wave)[len(wave) // 2]:.1f} s; "
        f"warm-up: {len(warm_up)} pages, worst {max(r[1] for r in warm_up):.1f} s"
        f"\n  backbone builds in the server: {dict(builds_warm)} after the warm-up, {dict(builds)} at the end"
        f"\n  server RSS peak during the first wave {peak / 2**20:.0f} MiB; second wave (job done): "
        f"{rss_before / 2**20:.0f} MiB before, {rss_after / 2**20:.0f} MiB after, "
        f"{(rss_after - rss_before) / SESSIONS / 2**20:+.1f} MiB a session"
    )
    assert running_at_start, "the job had already finished: the sessions did not load pages while it ran"
    for name, _seconds, errors in warm_up + wave + warm_again + second_wave:
        assert errors == [], f"{name} showed an exception: {errors}"
    for one_wave in (wave, second_wave):
        rendered = Counter(name for name, _, _ in one_wave)
        assert set(rendered) == set(PAGES) and sum(rendered.values()) == SESSIONS * PAGES_PER_SESSION
    assert builds_warm, "the Classify page loaded no backbone: the build count proves nothing"
    # Each (backbone, weights) once for all sessions. A run the job finishes can become Classify's default, and when
    # it is the same backbone under other weights (the offline demo's pair) that is a new model, built once too.
    assert set(builds_warm) <= set(builds) and max(builds.values()) == 1, (
        f"a backbone was loaded per session: {dict(builds)}"
    )
    assert rss_after - rss_before < SESSIONS * GROWTH_PER_SESSION_BYTES, (
        "the server's memory grows by more than a session's worth"
    )
    completed = len(RunRegistry(root / "runs.sqlite").list_runs(status="completed"))
    assert completed == completed_before + 2, "the job's two runs did not both complete under load"
