"""Wrong addresses in Chromium: an unknown page, one or two levels deep, says "Page not found" with a link to every
page (and no notice of Streamlit's own claiming to run Home), and the link works."""

from __future__ import annotations

import pytest

from tests.helpers.browser import launch_chromium, require_chromium, streamlit_server, wait_for_app_idle
from ui.navigation import PAGES


@pytest.fixture
def server(workspace, tmp_path):
    require_chromium()
    with streamlit_server(workspace_root=workspace.root, log_path=tmp_path / "server.log") as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize("address", ["comapre", "compare/extra"])
def test_an_unknown_address_shows_the_not_found_page_with_links(server, address):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page()
        page.goto(server.url_for(address))
        wait_for_app_idle(page, timeout_s=120)
        main = page.locator('[data-testid="stMain"]')
        assert "Page not found" in main.inner_text()
        assert f"/{address}" in main.inner_text()
        assert main.locator('a[data-testid="stPageLink-NavLink"]').count() == len(PAGES)
        assert page.get_by_role("dialog").count() == 0, "Streamlit's own notice: running the main page instead"
        main.locator("a", has_text="Compare").first.click()
        page.wait_for_url("**/compare", timeout=60_000)
        wait_for_app_idle(page, timeout_s=120)
        assert "Page not found" not in main.inner_text()
        assert main.locator("h1").first.inner_text().endswith("Compare")
        browser.close()
