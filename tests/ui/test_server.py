"""Tests for ui.server: the garbage collector's freeze of what the server has imported; the redirect of unknown
addresses to the not-found page."""

from __future__ import annotations

import gc
import sys
import types

import pytest

from ui import server


def test_freezes_once_per_batch_of_new_imports(monkeypatch):
    monkeypatch.setattr(server, "_modules_when_frozen", 0)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(len(sys.modules)))  # the test process stays unfrozen
    frozen: list[int] = []
    assert server.freeze_imported_objects() is True
    assert server.freeze_imported_objects() is False, "no module imported since: nothing to collect or freeze"
    monkeypatch.setitem(sys.modules, "flower_probe_test_new_module", types.ModuleType("flower_probe_test_new_module"))
    assert server.freeze_imported_objects() is True, "a page's first visit imported more: freeze again"
    assert frozen == [len(sys.modules) - 1, len(sys.modules)]


@pytest.mark.parametrize(
    ("path", "base_path", "accept", "expected"),
    [
        ("/compare/extra", "", "text/html,*/*", "/not_found?address=compare/extra"),
        ("/comapre", "", "text/html", "/not_found?address=comapre"),
        ("/a b/c&d", "", "text/html", "/not_found?address=a%20b/c%26d"),
        ("/flowers/compare/extra", "/flowers/", "text/html", "/flowers/not_found?address=compare/extra"),
        ("/compare", "", "text/html", None),  # a page
        ("/", "", "text/html", None),  # Home
        ("/not_found", "", "text/html", None),  # the not-found page itself: no loop
        ("/flowers/train", "flowers", "text/html", None),
        ("/elsewhere/compare/extra", "flowers", "text/html", None),  # outside the base path: not the app's
        ("/compare/extra", "", "*/*", None),  # not a browser asking for a page (a script, an image)
        ("/component/ui.hover_scatter/index.html", "", "text/html", None),  # Streamlit's own routes
        ("/_stcore/health", "", "text/html", None),
        ("/static/js/main.js", "", "text/html", None),
        ("/compare/favicon.png", "", "text/html", None),  # a file name: the static files answer it
    ],
)
def test_only_a_browser_asking_for_an_unknown_address_is_redirected(path, base_path, accept, expected):
    assert server.not_found_redirect(path, base_path=base_path, accept=accept) == expected


def test_every_page_address_is_known_to_the_redirect():
    from ui.navigation import NOT_FOUND, PAGES

    for page in PAGES:
        assert server.not_found_redirect(f"/{page.address}", base_path="", accept="text/html") is None
    assert server.not_found_redirect("/patches/x", base_path="", accept="text/html") == (
        f"/{NOT_FOUND.address}?address=patches/x"
    )
