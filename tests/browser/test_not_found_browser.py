"""Wrong addresses in Chromium: an unknown page says "Page not found" with a link to every page, and the link works."""

from __future__ import annotations

import pytest

from tests.helpers.browser import launch_chromium, require_chromium, streamlit_server, wait_for_app_idle
from ui.navigation import requested_unknown_path


class _Page:
    def __init__(self, url_path: str) -> None:
        self.url_path = url_path


def test_requested_unknown_path_reads_the_address():
    pages = [_Page(""), _Page("compare"), _Page("train")]
    assert requested_unknown_path(pages, url="http://h:1/compare") is None
    assert requested_unknown_path(pages, url="http://h:1/") is None
    assert requested_unknown_path(pages, url=None) is None
    assert requested_unknown_path(pages, url="http://h:1/home") == "home"
    assert requested_unknown_path(pages, url="http://h:1/base/train", base_path="base") is None
    assert requested_unknown_path(pages, url="http://h:1/base/trian", base_path="/base/") == "trian"


@pytest.fixture
def server(workspace, tmp_path):
    require_chromium()
    with streamlit_server(workspace_root=workspace.root, log_path=tmp_path / "server.log") as running:
        yield running


@pytest.mark.slow
def test_an_unknown_address_shows_the_not_found_page_with_links(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.goto(server.url_for("comapre"))
        wait_for_app_idle(page, timeout_s=120)
        main = page.locator('[data-testid="stMain"]')
        assert "Page not found" in main.inner_text()
        assert "/comapre" in main.inner_text()
        links = main.locator('a[data-testid="stPageLink-NavLink"]')
        assert links.count() == 8  # every page of the app
        page.keyboard.press("Escape")  # Streamlit's own notice of the unknown address
        main.locator("a", has_text="Compare").first.click()
        page.wait_for_url("**/compare", timeout=60_000)
        wait_for_app_idle(page, timeout_s=120)
        assert "Page not found" not in main.inner_text()
        assert main.locator("h1").first.inner_text().endswith("Compare")
        browser.close()
