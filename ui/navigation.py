"""The app's pages, its menu, and a real "page not found" for any other address.

Streamlit's own menu is off (``client.showSidebarNavigation = false`` in .streamlit/config.toml): before the entry
script has run, Streamlit listed the files of ``pages/`` ("dashboard, classify, ...") for about 5 s on a fresh
server. The menu is drawn here instead, from the same list ``st.navigation`` routes with, once the script runs.

An address that names no page (``/home``, ``/comapre``) used to open Home under a "Page not found" toast with no way
back; ``requested_unknown_path`` spots it from the browser's address and ``not_found_page`` says so, with a link to
every page. (An address two levels deep, ``/compare/extra``, never reaches the script: Streamlit serves its page
with asset links relative to the wrong folder, a blank page; only a change to how the server is started can catch
it.)
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

import streamlit as st

from core.base.text import markdown_text


def page_menu(pages: list) -> None:
    """The menu, in the sidebar: a link to each of ``pages`` (``st.Page``s, as ``st.navigation`` got them)."""
    with st.sidebar:
        for page in pages:
            st.page_link(page)
        st.divider()


def requested_path(url: str | None, *, base_path: str = "") -> str:
    """The page part of the browser's address: ``http://host:8501/base/compare?x=1`` -> ``compare`` ('' for Home)."""
    if not url:
        return ""
    path = unquote(urlparse(url).path).strip("/")
    base = base_path.strip("/")
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base) :].strip("/")
    return path


def requested_unknown_path(pages: list, *, url: str | None, base_path: str = "") -> str | None:
    """The address's page path when it names none of ``pages`` (``st.Page``s); None when it names one or Home."""
    path = requested_path(url, base_path=base_path)
    known = {page.url_path for page in pages} | {""}
    return None if path in known else path


def not_found_page(path: str, pages: list) -> None:
    """ "Page not found", the address asked for, and a link to every page."""
    st.title(":material/explore_off: Page not found")
    st.markdown(f"There is no page at “/{markdown_text(path)}” in Flower Probe. The pages are:")
    for page in pages:
        st.page_link(page)
