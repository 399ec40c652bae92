"""Security: the access gate, hostile paths and archives, hostile names in the browser, pickles, upload limits.

The browser tests run the real server (tests/helpers/live_server.py) on a workspace whose class and file names
are HTML, JavaScript, quotes, newlines and non-ASCII, and visit every page in headless Chromium: no
script may run and the names must show as literal text.
"""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
import time
import tomllib
from pathlib import Path

import pytest
import requests
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.base import fileio
from core.base.errors import FlowerProbeError, UnsafePathError
from core.base.workspace import Workspace
from core.data.datasets import load_dataset
from core.predict.classify import Predictor
from core.runs.registry import RunRegistry
from tests.helpers.browser import wait_for_app_idle
from tests.helpers.image_catalogue import HOSTILE_FILE_NAMES
from tests.helpers.live_server import (
    PAGES,
    REPO,
    exceptions_shown,
    launch_chromium,
    live_server,
    open_page,
    page_file,
    wait_rendered,
)
from tests.helpers.workspaces import IMAGES_PER_CLASS, folder_dataset_run

PASSWORD = "correct horse battery staple"
CONFIG = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())


# ----------------------------------------------------------------------------------------------- 8: who gets in


def _gated_app() -> None:
    import streamlit as st

    from ui.auth import require_access

    require_access()
    st.write("APP CONTENT")


def _elements(at: AppTest) -> list[str]:
    """Every element the visitor was sent, as 'type: value', main area and sidebar."""
    found = []

    def walk(node) -> None:
        children = getattr(node, "children", None)
        if isinstance(children, dict):  # a block (main, sidebar, form, columns): what counts is inside
            for child in children.values():
                walk(child)
        else:
            found.append(f"{node.type}: {getattr(node, 'value', '')}")

    walk(at.main)
    walk(at.sidebar)
    return found


def _login_form_only(at: AppTest, *, error: bool = False) -> None:
    assert not at.exception
    elements = [e.split(":")[0] for e in _elements(at)]
    assert sorted(elements) == sorted(["title", "text_input", "button"] + (["error"] if error else [])), _elements(at)
    assert at.text_input[0].label == "Password"


@pytest.fixture
def password(monkeypatch) -> str:
    monkeypatch.setenv("FLOWER_PROBE_PASSWORD", PASSWORD)
    return PASSWORD


def test_gate_is_off_without_a_password(monkeypatch):
    monkeypatch.delenv("FLOWER_PROBE_PASSWORD", raising=False)
    at = AppTest.from_function(_gated_app).run()
    assert _elements(at) == ["markdown: APP CONTENT"]


def test_wrong_password_gets_only_the_login_form_and_the_right_one_the_app(password):
    at = AppTest.from_function(_gated_app).run()
    _login_form_only(at)
    for guess in ("", "wrong", PASSWORD.upper(), PASSWORD + " "):
        at.text_input[0].input(guess)
        at.button[0].click().run()
        _login_form_only(at, error=True)
    at.text_input[0].input(password)
    at.button[0].click().run()
    assert _elements(at) == ["markdown: APP CONTENT"]
    assert _elements(at.run()) == ["markdown: APP CONTENT"], "the session stays signed in"


def test_password_from_the_secrets_file(monkeypatch):
    monkeypatch.delenv("FLOWER_PROBE_PASSWORD", raising=False)
    at = AppTest.from_function(_gated_app)
    at.secrets["password"] = PASSWORD
    _login_form_only(at.run())


@pytest.mark.parametrize("logged_in", [False, True])
def test_oidc_login_where_configured(monkeypatch, logged_in):
    monkeypatch.delenv("FLOWER_PROBE_PASSWORD", raising=False)
    at = AppTest.from_function(_gated_app)
    at.secrets["auth"] = {
        "redirect_uri": "http://localhost:8501/oauth2callback",
        "cookie_secret": "a long random string",
        "company": {
            "client_id": "id",
            "client_secret": "secret",
            "server_metadata_url": "https://id.example.org/.well-known/openid-configuration",
        },
    }
    at.user = {"is_logged_in": logged_in, "email": "ann@example.org"}
    at.run()
    if logged_in:
        assert "markdown: APP CONTENT" in _elements(at)
    else:
        assert "markdown: APP CONTENT" not in _elements(at) and [b.label for b in at.button] == ["Log in with company"]


def test_dashboard_with_a_password_sends_nothing_but_the_form(password, populated_workspace):
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=120).run()
    _login_form_only(at)
    assert str(populated_workspace.root) not in "\n".join(_elements(at)), "the workspace path leaked to the login page"
    at.text_input[0].input("guess")
    at.button[0].click().run()
    _login_form_only(at, error=True)
    at.text_input[0].input(password)
    at.button[0].click().run()
    assert not at.exception
    assert any(str(populated_workspace.root) in e for e in _elements(at)), "the app did not open for the right password"


def test_shipped_config_listens_on_localhost_with_xsrf_and_an_upload_limit():
    server = CONFIG["server"]
    assert server["address"] == "127.0.0.1"
    assert server["enableXsrfProtection"] is True
    assert server["maxUploadSize"] == 50
    assert CONFIG["client"]["showErrorDetails"] == "none"


@pytest.mark.slow
def test_password_gate_holds_for_every_page_url(browser, populated_root, tmp_path):
    """Deep links too, from a fresh server's first request on: no page runs before the password is given."""
    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    with live_server(root, log_path=tmp_path / "server.log", env={"FLOWER_PROBE_PASSWORD": PASSWORD}) as server:
        context = browser.new_context()
        try:
            for name in [n for n in PAGES if n != "home"] + ["home"]:
                path, title = PAGES[name]
                page = context.new_page()
                page.goto(f"{server.url}/{path}", wait_until="domcontentloaded")
                page.locator('input[type="password"], h1').first.wait_for(timeout=120_000)
                page.wait_for_timeout(1500)  # a page that slipped through would render its title meanwhile
                text = page.evaluate("() => document.body.innerText")
                assert page.locator('input[type="password"]').count() == 1, f"/{path} showed no login form:\n{text}"
                if name != "home":
                    assert page.get_by_role("heading", name=title).count() == 0, (
                        f"/{path} ran its page without a password:\n{text}"
                    )
                assert str(root) not in text, f"/{path} showed the workspace path without a password"
                page.close()
            page = context.new_page()
            page.goto(f"{server.url}/{PAGES['classify'][0]}", wait_until="domcontentloaded")
            page.locator('input[type="password"]').fill(PASSWORD)
            page.get_by_role("button", name="Enter").click()
            page.get_by_text(str(root)).first.wait_for(timeout=120_000)  # the sidebar: the app opened
        finally:
            context.close()


@pytest.mark.slow
def test_without_a_password_a_deep_link_on_a_fresh_server_shows_its_page_in_the_app(browser, populated_root, tmp_path):
    """The first request a fresh server gets is a deep link: the page opens inside the app (sidebar included)."""
    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    with live_server(root, log_path=tmp_path / "server.log", env={"FLOWER_PROBE_PASSWORD": ""}) as server:
        context = browser.new_context()
        try:
            path, title = PAGES["compare"]
            page = context.new_page()
            page.goto(f"{server.url}/{path}", wait_until="domcontentloaded")
            page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
            page.get_by_text(str(root)).first.wait_for(timeout=120_000)  # the sidebar: dashboard.py ran too
            assert page.locator('input[type="password"]').count() == 0
        finally:
            context.close()


# ----------------------------------------------------------------------------------------------- 5: hostile paths


def _write_classes(folder: Path, classes: dict[str, int]) -> None:
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (16, 16), (40 * i % 256, 90, 160)).save(folder / name / f"{i}.jpg")


@pytest.mark.parametrize("link", ["image", "class folder"])
def test_symlink_inside_a_dataset_leading_out_is_refused(workspace, tmp_path, link):
    outside = tmp_path / "outside"
    _write_classes(outside, {"private": 3})
    (outside / "secret.txt").write_text("not for the dashboard")
    mine = workspace.data_root / "mine"
    _write_classes(mine, {"a": 3, "b": 3})
    if link == "image":
        (mine / "a" / "3.jpg").symlink_to(outside / "private" / "0.jpg")
    else:
        (mine / "c").symlink_to(outside / "private", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="outside the dataset folder"):
        load_dataset("folder:mine", workspace)


def test_symlink_that_stays_inside_the_dataset_is_fine(workspace):
    mine = workspace.data_root / "mine"
    _write_classes(mine, {"a": 3, "b": 3})
    (mine / "a" / "again.jpg").symlink_to(mine / "b" / "0.jpg")
    assert len(load_dataset("folder:mine", workspace).image_paths) == 7


@pytest.mark.parametrize("key", ["folder:../outside", "folder:/etc", "folder:link", "folder:mine/../../outside"])
def test_dataset_page_refuses_paths_outside_the_data_root(workspace, tmp_path, key):
    outside = tmp_path / "outside"
    _write_classes(outside, {"private-class-x": 3, "private-class-y": 3})
    workspace.data_root.mkdir(parents=True, exist_ok=True)
    (workspace.data_root / "link").symlink_to(outside, target_is_directory=True)
    at = AppTest.from_file(str(page_file("dataset")), default_timeout=60)
    at.query_params["dataset"] = key
    at.run()
    assert not at.exception
    assert any("outside the data root" in e.value for e in at.error), [e.value for e in at.error]
    assert "private-class" not in "\n".join(_elements(at)), "the page showed what lies outside the data root"


def _archive_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    archive = tmp_path / "hostile.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        ok = tarfile.TarInfo("jpg/image_0001.jpg")
        ok.size = 4
        tar.addfile(ok, io.BytesIO(b"jpeg"))
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return archive


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member",
    [
        _link("jpg/passwd.jpg", "/etc/passwd", tarfile.SYMTYPE),
        _link("jpg/up.jpg", "../../../outside.txt", tarfile.SYMTYPE),
        _link("jpg/hard.jpg", "/etc/passwd", tarfile.LNKTYPE),
        _link("jpg", "/tmp", tarfile.SYMTYPE),  # a folder link, so later members would land outside
    ],
    ids=["absolute symlink", "symlink with ..", "hard link out", "folder symlink"],
)
def test_archive_links_leading_out_are_refused(tmp_path, member):
    archive = _archive_with(tmp_path, member)
    with pytest.raises(UnsafePathError, match="Refusing to extract"):
        fileio.safe_extract_tar(archive, tmp_path / "out")
    links = [p for p in (tmp_path / "out").rglob("*") if p.is_symlink()]
    assert links == [], f"a link was extracted: {links}"


# ----------------------------------------------------------------------------------------------- 6: pickles, uploads


def test_head_file_with_a_pickle_payload_is_refused_not_run(tmp_path, populated_root):
    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    ws = Workspace(root=root, data_root=root / "datasets")
    run = RunRegistry(ws.registry_path).list_runs(status="completed")[0]
    head = ws.heads_dir / Path(run["head_path"]).name  # this copy's file, never the shared workspace's
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    # What a hostile "head" looks like: torch.save's zip with a pickle that runs code when unpickled.
    torch.save({"0.weight": Payload()}, head)
    with pytest.raises(FlowerProbeError, match="not the head"):
        Predictor.from_run(run["id"], workspace=ws)
    assert not marker.exists(), "the pickle payload ran"
    head.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(FlowerProbeError, match="not the head"):
        Predictor.from_run(run["id"], workspace=ws)
    assert not marker.exists(), "the pickle payload ran"


# ---------------------------------------------------------------------------------- 6: hostile names in the browser

XSS_FLAG = '<img src=x onerror="window.__xss=1">'
NEWLINE_NAME = "first line\nsecond <b>line<\u2215b>"  # "/" would make a subfolder
HOSTILE_CLASSES = [*HOSTILE_FILE_NAMES, XSS_FLAG, NEWLINE_NAME]
XSS_PROBE = "() => window.__xss"
JS_LINKS = (
    "() => [...document.querySelectorAll('a[href]')]"
    ".filter(a => a.href.trim().toLowerCase().startsWith('javascript:')).length"
)
ALL_TEXT = (
    "() => document.body.innerText + '\\n' + "
    "[...document.querySelectorAll('svg text')].map(t => t.textContent).join('\\n')"
)


def _hostile_file(label: int, index: int) -> str:
    return f"{HOSTILE_FILE_NAMES[(label + index) % len(HOSTILE_FILE_NAMES)]} {index}.jpg"


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    """A workspace whose one dataset has hostile class and file names, and a completed run on it."""
    root = tmp_path_factory.mktemp("hostile") / "workspace"
    folder_dataset_run(root, "hostile", HOSTILE_CLASSES, _hostile_file, epochs=2)
    return root


@pytest.fixture(scope="module")
def hostile_server(hostile_root, tmp_path_factory):
    with live_server(hostile_root, log_path=tmp_path_factory.mktemp("logs") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def _check_no_script_ran(page, dialogs: list[str]) -> None:
    assert dialogs == [], f"a script ran: dialog(s) {dialogs}"
    for frame in page.frames:
        assert frame.evaluate(XSS_PROBE) is None, f"a script ran in {frame.url}: window.__xss was set"
        assert frame.evaluate(JS_LINKS) == 0, f"a javascript: link was rendered in {frame.url}"
    assert exceptions_shown(page) == []


# Pages that show every class (and file) name as text once opened, and the query that opens them on the dataset.
LITERAL_NAMES = {"dataset": "dataset=folder:hostile", "compare": ""}
LABEL_PREFIX = 10  # characters of a class name every chart label keeps


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PAGES))
def test_hostile_names_render_as_text_on_every_page(browser, hostile_server, name):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    dialogs: list[str] = []
    context.on(
        "page", lambda page: page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    )
    try:
        page, _ = open_page(context, hostile_server, name, query=LITERAL_NAMES.get(name, ""))
        page.wait_for_timeout(1000)  # let images fail to load and their onerror handlers fire, if any were rendered
        _check_no_script_ran(page, dialogs)
        if name == "compare":  # it opens on its overview: show every view, its charts and galleries name the classes
            from ui.compare import DEFAULT_VIEWS, VIEWS

            for view in VIEWS:
                if view not in DEFAULT_VIEWS:
                    page.locator('[data-testid="stButtonGroup"] button', has_text=view).first.click()
                    wait_for_app_idle(page, timeout_s=120)
            page.wait_for_timeout(1000)
            _check_no_script_ran(page, dialogs)
        if name in LITERAL_NAMES:
            text = page.evaluate(ALL_TEXT)
            for hostile in HOSTILE_FILE_NAMES + [XSS_FLAG]:
                # Chart axes shorten long labels with "…"; what is shown must still be the literal text.
                shown = hostile if name == "dataset" else hostile[:LABEL_PREFIX]
                assert shown in text, f"{shown!r} is not shown literally on the {name} page"
        if name == "dataset":
            # Every class's sample photos are shown (fewer classes than MAX_CLASSES_SHOWN), captioned by their files.
            # st.image's frontend code loads lazily, after the script run ends: the captions may come a moment later.
            files = [_hostile_file(label, i) for label in range(len(HOSTILE_CLASSES)) for i in range(IMAGES_PER_CLASS)]
            deadline = time.monotonic() + 30
            while (missing := [f for f in files if f not in page.evaluate(ALL_TEXT)]) and time.monotonic() < deadline:
                page.wait_for_timeout(250)
            assert not missing, f"file names are not shown literally: {missing}"
            page.wait_for_timeout(1000)  # the photos are rendered now: let any onerror handler among them fire
            _check_no_script_ran(page, dialogs)
        if name == "explorer":
            _hover_hostile_points(page)
            _check_no_script_ran(page, dialogs)
        if name == "classify":
            page.get_by_placeholder("Choose test images").click()
            page.get_by_role("option").first.click()
            page.keyboard.press("Escape")
            page.get_by_text("choose test images to see predictions").wait_for(state="detached", timeout=120_000)
            wait_rendered(page, PAGES["classify"][1], timeout_s=120)
            page.wait_for_timeout(1000)
            _check_no_script_ran(page, dialogs)
            assert any(hostile in page.evaluate(ALL_TEXT) for hostile in HOSTILE_FILE_NAMES), "no class shown literally"
    finally:
        context.close()


def _hover_hostile_points(page) -> None:
    """Hover points of the explorer's map: the tooltip must carry the hostile names as plain text."""
    from ui.hover_scatter import FRAME_TITLE

    deadline = time.monotonic() + 60
    while not (inner := next((f for f in page.frames if f"/component/{FRAME_TITLE}/" in f.url), None)):
        assert time.monotonic() < deadline, f"the explorer's map never loaded: frames {[f.url for f in page.frames]}"
        page.wait_for_timeout(250)
    inner.wait_for_function("window.hoverScatter && window.hoverScatter.ready", timeout=60_000)
    # The map may start below the fold (the controls sit above it): the mouse reaches only what is in view.
    frame = page.locator(f'iframe[title="{FRAME_TITLE}"]').first
    frame.scroll_into_view_if_needed()
    box = frame.bounding_box()
    viewport = page.viewport_size
    seen = set()
    for row in inner.evaluate("hoverScatter.isolatedRows(0)")[:6]:
        point = inner.evaluate(f"hoverScatter.pointClientPosition(0, {row})")
        x, y = box["x"] + point["x"], box["y"] + point["y"]
        assert 0 <= x < viewport["width"] and 0 <= y < viewport["height"], f"row {row}'s point is out of view: {x}, {y}"
        page.mouse.move(x, y, steps=4)
        inner.wait_for_function(f"hoverScatter.tooltip().row === {row}", timeout=10_000)
        tip = inner.evaluate("hoverScatter.tooltip()")
        assert tip["className"] in HOSTILE_CLASSES and any(tip["fileName"].startswith(h) for h in HOSTILE_FILE_NAMES), (
            tip
        )
        seen.add(tip["className"])
    assert seen, "no point could be hovered"


@pytest.mark.slow
def test_uploads_over_the_limit_are_refused_by_the_server(browser, hostile_server):
    """Replay the browser's own upload request: a body over server.maxUploadSize gets 413, a missing XSRF token 403."""
    context = browser.new_context()
    try:
        page, _ = open_page(context, hostile_server, "classify")
        with page.expect_request(
            lambda r: "/_stcore/upload_file/" in r.url and r.method == "PUT", timeout=60_000
        ) as upload:
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
                files=[{"name": "small.png", "mimeType": "image/png", "buffer": _png_bytes()}]
            )
        request = upload.value
        cookies = {c["name"]: c["value"] for c in context.cookies()}
        headers = {"X-Xsrftoken": request.headers["x-xsrftoken"]}
        limit = CONFIG["server"]["maxUploadSize"] * 1024 * 1024

        def put(size: int, headers: dict) -> int:
            files = {"file": ("photo.jpg", b"\xff" * size, "image/jpeg")}
            return requests.put(request.url, files=files, headers=headers, cookies=cookies, timeout=120).status_code

        assert put(1024, headers) in (200, 204)  # the replayed request is valid...
        assert put(limit + 1024, headers) == 413  # ...until it is over the limit
        assert put(1024, {}) == 403  # and without the XSRF token nothing is accepted
    finally:
        context.close()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()
