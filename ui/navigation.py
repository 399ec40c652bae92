"""The app's pages, its menu, and a real "page not found" for any other address.

``PAGES`` is the one table of pages: ``dashboard.py`` routes over it with ``st.navigation``, draws the menu from it,
and the server's middleware (``ui.server``) reads its addresses to tell an unknown address from a page.

Streamlit's own menu is off (``client.showSidebarNavigation = false`` in .streamlit/config.toml): before the entry
script has run, Streamlit listed the files of ``pages/`` ("dashboard, classify, ...") for about 5 s on a fresh
server. The menu is drawn here instead, from the same table, once the script runs.

An unknown address used to open Home under Streamlit's "Page not found" notice ("running the app's main page") with
no way back, and one two levels deep (``/compare/extra``) gave a blank page: Streamlit serves its index page there
with asset links relative to the wrong folder, and no script ever runs. Now the server redirects a browser's request
for any address that names no page to ``/not_found?address=...`` (``ui.server.not_found_redirect``), a page of its
own (pages/not_found.py), which says what was asked for and links to every page.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.base.text import markdown_text


@dataclass(frozen=True)
class PageEntry:
    """One page of the app: its script under pages/, its menu title and icon, its address below the base path."""

    script: str
    title: str
    icon: str
    address: str  # "" for Home, the default page


PAGES = (
    PageEntry("pages/home.py", "Home", ":material/home:", ""),
    PageEntry("pages/dataset.py", "Dataset", ":material/photo_library:", "dataset"),
    PageEntry("pages/train.py", "Train", ":material/model_training:", "train"),
    PageEntry("pages/compare.py", "Compare", ":material/compare_arrows:", "compare"),
    PageEntry("pages/explorer.py", "Explorer", ":material/scatter_plot:", "explorer"),
    PageEntry("pages/classify.py", "Classify", ":material/image_search:", "classify"),
    PageEntry("pages/health.py", "Health", ":material/health_and_safety:", "health"),
    PageEntry("pages/patches.py", "Patches", ":material/grid_on:", "patches"),
)
# Where the server sends an unknown address (the address itself in ?address=): routed to, never in the menu. Its
# address is its file's name, which Streamlit's first run on a fresh server matches (pages/not_found.py says why).
NOT_FOUND = PageEntry("pages/not_found.py", "Page not found", ":material/explore_off:", "not_found")
PAGE_ADDRESSES = frozenset({entry.address for entry in (*PAGES, NOT_FOUND)})


def _page(entry: PageEntry):
    if entry.address == "":
        return st.Page(entry.script, title=entry.title, icon=entry.icon, default=True)
    return st.Page(entry.script, title=entry.title, icon=entry.icon, url_path=entry.address)


def app_pages() -> tuple[list, object]:
    """The menu's ``st.Page``s, in ``PAGES`` order, and the not-found page (routed to, never listed)."""
    return [_page(entry) for entry in PAGES], _page(NOT_FOUND)


def page_menu(pages: list) -> None:
    """The menu, in the sidebar: a link to each of ``pages`` (``st.Page``s, as ``app_pages`` made them)."""
    with st.sidebar:
        for page in pages:
            st.page_link(page)
        st.divider()


def not_found_page(address: str) -> None:
    """ "Page not found", the address asked for (when the redirect carried it), and a link to every page."""
    st.title(f"{NOT_FOUND.icon} {NOT_FOUND.title}")
    asked = f"at “/{markdown_text(address.strip('/'))}” " if address.strip("/") else ""
    st.markdown(f"There is no page {asked}in Flower Probe. The pages are:")
    for entry in PAGES:
        st.page_link(entry.script, label=entry.title, icon=entry.icon)
