"""Every asset comes from the dashboard's own server: a full walk of all pages in Chromium requests nothing elsewhere.

A request to another host fails on an offline machine (a missing favicon, a font, a script) and leaks
that someone opened the dashboard when online. The walk opens each page of ``dashboard.py`` on a
populated workspace, waits for it to finish, and records every request the pages (and their frames)
make; only ``http://127.0.0.1:<port>`` and in-page schemes (``data:``, ``blob:``, ``about:``) may appear.
The favicon itself is checked to be served here (or inlined).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.helpers.browser import launch_chromium, require_chromium, streamlit_server, wait_for_app_idle
from ui.navigation import PAGES

LOCAL_SCHEMES = ("data", "blob", "about")
PAGE_TIMEOUT_S = 120


def _page_paths() -> list[str]:
    """URL paths of every page in the app's navigation (``ui.navigation.PAGES``): the default page at ""."""
    return [entry.address for entry in PAGES]


@pytest.mark.slow
def test_a_walk_of_every_page_requests_only_this_server(populated_workspace, tmp_path):
    from playwright.sync_api import sync_playwright

    require_chromium()
    requests: list[str] = []
    with (
        streamlit_server(workspace_root=populated_workspace.root, log_path=tmp_path / "server.log") as server,
        sync_playwright() as playwright,
    ):
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context()
            context.on("request", lambda request: requests.append(request.url))
            page = context.new_page()
            for path in _page_paths():
                page.goto(server.url_for(path), wait_until="load", timeout=PAGE_TIMEOUT_S * 1000)
                wait_for_app_idle(page, timeout_s=PAGE_TIMEOUT_S)
                page.wait_for_timeout(500)  # images, fonts and frames the finished run asked for
            icon = page.evaluate("() => [...document.querySelectorAll('link[rel~=icon]')].map(l => l.href)")
        finally:
            browser.close()
    assert len(requests) > len(_page_paths()), "the walk recorded too few requests to mean anything"
    foreign = sorted(
        {
            url
            for url in requests
            if urlsplit(url).scheme not in LOCAL_SCHEMES
            and (urlsplit(url).hostname, urlsplit(url).port) != ("127.0.0.1", server.port)
        }
    )
    assert not foreign, f"requests left 127.0.0.1: {foreign}"
    # Streamlit inlines an image page icon as a data: URL or serves it itself; either way not from a CDN.
    assert icon and all(urlsplit(href).scheme == "data" or urlsplit(href).hostname == "127.0.0.1" for href in icon), (
        icon
    )
