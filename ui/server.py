"""Settings of the Streamlit server process itself, not of any one page: the garbage collector's start-up freeze, and
the middleware that sends a browser asking for an unknown address to the "page not found" page.

Why the freeze: the server holds ~475,000 Python objects from its imports alone (torch, scipy, sympy, pandas,
streamlit), and CPython's full (generation 2) collection walks every one of them. On the project's 2-core
machine that took 230-370 ms, and one such collection came at the end of nearly every script run, before
Streamlit sent "script finished" to the browser, so every page waited for it. Objects moved into the
permanent generation with ``gc.freeze`` are never walked again (reference counting still frees them when
unused; only a cycle among them would stay). Measured in Chromium with ``python -m bench --only browser``
(README, Performance).

Why the middleware: Streamlit answers any unknown address with its index page, whose script and style links are
relative (``./static/js/...``). One level deep (``/comapre``) the app opens Home under a notice saying so; two
levels deep (``/compare/extra``) the links resolve to ``/compare/static/...``, which is the index page again, and
the browser is left with a blank page. No page script ever runs for such an address, so only the server can catch
it: ``dashboard.py`` builds its ``st.App`` with ``UnknownAddressToNotFound``, which redirects a browser's request
for an address that names no page to the app's not-found page (``ui.navigation``).
"""

from __future__ import annotations

import gc
import sys
import threading
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.responses import RedirectResponse
from streamlit import config

from ui.navigation import NOT_FOUND, PAGE_ADDRESSES

_lock = threading.Lock()
_modules_when_frozen = 0


def freeze_imported_objects() -> bool:
    """Freeze every object alive now, when modules were imported since the last freeze; True when it froze.

    Call it at the start of every script run: a first visit to a page imports its libraries during that
    run, and the next run freezes them too. Each freeze first collects the garbage (one full collection,
    a few hundred ms, a handful of times in a server's life), so no garbage is frozen with the rest.
    """
    global _modules_when_frozen
    with _lock:  # sessions run their scripts in threads of their own
        if len(sys.modules) <= _modules_when_frozen:
            return False
        _modules_when_frozen = len(sys.modules)
        gc.collect()
        gc.freeze()
        return True


# The first path segments of Streamlit's own routes below the base path (streamlit.web.server.starlette's
# starlette_routes and starlette_auth_routes: _stcore/..., media/..., component/..., static/..., app/static/...,
# auth/login, oauth2callback): requests there are Streamlit's to answer, whatever they ask for.
STREAMLIT_ROUTES = frozenset({"_stcore", "media", "component", "static", "app", "auth", "oauth2callback"})


def not_found_redirect(path: str, *, base_path: str, accept: str) -> str | None:
    """Where to send a request for ``path``: ``<base>/not_found?address=<path below the base>`` when it is a browser
    asking for a page (``accept`` names text/html) at an address that is none of the app's pages
    (``ui.navigation.PAGE_ADDRESSES``) and outside Streamlit's own routes; else None.

    >>> not_found_redirect("/compare/extra", base_path="", accept="text/html,*/*")
    '/not_found?address=compare/extra'
    >>> not_found_redirect("/compare", base_path="", accept="text/html") is None
    True
    """
    base = [part for part in base_path.split("/") if part]
    parts = [part for part in path.split("/") if part]
    if parts[: len(base)] != base:
        return None
    address = "/".join(parts[len(base) :])
    if address in PAGE_ADDRESSES or address.split("/")[0] in STREAMLIT_ROUTES or "text/html" not in accept:
        return None
    if "." in address.rsplit("/", 1)[-1]:
        return None  # a file name (favicon.png, manifest.json): Streamlit's static files answer it
    prefix = "".join(f"/{part}" for part in base)
    return f"{prefix}/{NOT_FOUND.address}?address={quote(address)}"


class UnknownAddressToNotFound:
    """ASGI middleware: a browser's GET of an address that names no page is redirected (302) to the "page not found"
    page (``not_found_redirect``); every other request passes through untouched.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            target = not_found_redirect(
                scope["path"],
                base_path=config.get_option("server.baseUrlPath") or "",
                accept=Headers(scope=scope).get("accept", ""),
            )
            if target is not None:
                await RedirectResponse(target, status_code=302)(scope, receive, send)
                return
        await self.app(scope, receive, send)
