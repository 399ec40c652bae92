"""Every page with hostile class, file and dataset names: every label shows as text, every CSV download is formula-safe.

The names carry HTML (``<img src=x onerror=...>``, ``<script>``), Markdown (``**bold**``, links), Streamlit
directives (``:red[x]``), LaTeX (``$x$``) and spreadsheet formulas (cells starting with ``=``, ``+``, ``-``,
``@``). One workspace holds a folder dataset with such class and file names, whose own name is hostile
too, and a completed run on it; each page of ``dashboard.py`` renders under AppTest and then:

- no Markdown source (markdown, captions, alerts, widget/tab/expander labels, image captions) holds the
  markup unescaped, and the names reach the reader literally (tables, or Markdown once unescaped);
- Plotly specs hold names as entities (``&lt;img ...``), never as tags;
- every ``st.download_button`` CSV (captured, deferred ones called) has no cell a spreadsheet would run
  and no "None" cell.

The real-browser counterpart (no script runs, hover tooltips) is tests/browser/test_security.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from streamlit.delta_generator import DeltaGenerator
from streamlit.testing.v1 import AppTest

from core.base.csv_export import FORMULA_PREFIXES
from core.base.workspace import Workspace
from tests.helpers.bar_tables import bar_tables
from tests.helpers.image_catalogue import HOSTILE_FILE_NAMES
from tests.helpers.photo_grids import photo_grids
from tests.helpers.workspaces import folder_dataset_run, use_workspace
from ui.navigation import PAGES

REPO = Path(__file__).resolve().parents[2]
RENDER_TIMEOUT_S = 120
FORMULA_NAMES = ['=HYPERLINK("x.invalid","y")', "+cmd", "-2+3", "@SUM(A1)"]
DIRECTIVE_NAMES = [":red[x] $x$"]
CLASSES = [*HOSTILE_FILE_NAMES, *FORMULA_NAMES, *DIRECTIVE_NAMES]
DATASET_NAME = "=1+1 **ds** <img src=x onerror=alert(2)>"
DATASET_KEY = f"folder:{DATASET_NAME}"
UNREADABLE = "broken.jpg"
# Markup that must never reach Streamlit's Markdown unescaped (a backslash before "<" makes it text).
RAW_MARKUP = re.compile(r"(?<!\\)<(img|script|b>)|\*\*bold\*\*|\*\*ds\*\*|:red\[|\$x\$|\]\(javascript")


def _file_name(label: int, index: int) -> str:
    return f"{CLASSES[(label + index) % len(CLASSES)]} {index}.jpg"


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-names") / "workspace"
    folder_dataset_run(root, DATASET_NAME, CLASSES, _file_name, epochs=1, unreadable=UNREADABLE)
    return root


@pytest.fixture
def hostile_workspace(hostile_root, monkeypatch) -> Workspace:
    return use_workspace(monkeypatch, hostile_root)


@pytest.fixture
def downloads(monkeypatch) -> list[tuple[str, str]]:
    """(file name, text) of every download button the pages draw; deferred data is called as a click would."""
    captured: list[tuple[str, str]] = []
    original = DeltaGenerator.download_button

    def recording(self, label, data, file_name=None, *args, **kwargs):
        content = data() if callable(data) else data
        captured.append((str(file_name), content.decode("utf-8") if isinstance(content, bytes) else str(content)))
        return original(self, label, data, file_name, *args, **kwargs)

    import streamlit

    monkeypatch.setattr(DeltaGenerator, "download_button", recording)
    monkeypatch.setattr(
        streamlit, "download_button", lambda *args, **kwargs: recording(streamlit._main, *args, **kwargs)
    )
    return captured


def _unescaped(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown)


def _markdown_sources(at: AppTest) -> list[str]:
    """Everything Streamlit parses as Markdown: text elements, alerts, image captions and every label."""
    sources = [
        str(e.value)
        for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "header", "subheader")
        for e in at.get(kind)
    ]
    for kind in (
        "selectbox",
        "multiselect",
        "button",
        "toggle",
        "checkbox",
        "number_input",
        "text_input",
        "radio",
        "expander",
        "tab",
        "metric",
    ):
        sources += [str(getattr(e, "label", "") or "") for e in at.get(kind)]
    sources += [str(getattr(e.proto, "label", "")) for e in at.get("download_button")]
    return sources


def _plain_texts(at: AppTest) -> set[str]:
    """Text shown without Markdown: table cells and headers (bar tables' markup checked there), and widget options."""
    shown = {cell for table in bar_tables(at) for row in table for cell in row}
    for frame in at.dataframe:
        shown |= {str(v) for v in frame.value.astype(str).to_numpy().ravel().tolist() + list(frame.value.columns)}
    for widget in [*at.selectbox, *at.multiselect]:
        shown |= {str(option) for option in widget.options}
    return shown


def _check_csv(file_name: str, text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows, f"{file_name} is empty"
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_PREFIXES), f"{file_name}: a spreadsheet would run the cell {cell!r}"
            assert cell != "None", f"{file_name}: a 'None' cell in {row}"
    return rows


def _open(page: str) -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=RENDER_TIMEOUT_S)
    at.query_params["dataset"] = DATASET_KEY
    at.run()
    at.switch_page(page).run()
    if page.endswith("compare.py"):  # every view, so every label and chart is checked
        from ui.compare import VIEWS, VIEWS_KEY

        at.button_group(key=VIEWS_KEY).set_value(list(VIEWS)).run()
    assert not at.exception, f"{page}: {[e.message for e in at.exception]}"
    return at


@pytest.mark.parametrize("page", [entry.script for entry in PAGES])
def test_hostile_names_are_text_in_every_label_and_safe_in_every_csv(page, hostile_workspace, downloads):
    if page.endswith("train.py"):  # a job titled with the dataset's name, as a launch from this page makes
        from ui.state import job_runner

        runner = job_runner()
        job = runner.submit(
            f"efficientnet_lite0 on {DATASET_NAME}, split 1", lambda context: context.set_current(CLASSES[0])
        )
        runner.wait(job.id, timeout_s=30)
    at = _open(page)
    sources = _markdown_sources(at)
    for source in sources:
        assert not RAW_MARKUP.search(source), f"{page}: markup reaches Markdown unescaped in {source!r}"
    gallery_captions = [caption for grid in photo_grids(at) for caption in grid]  # their markup checked there
    shown = " ".join(_plain_texts(at) | set(gallery_captions)) + " " + " ".join(_unescaped(s) for s in sources)
    assert DATASET_NAME in shown or any(name in shown for name in CLASSES), (
        f"{page}: no hostile name is shown literally"
    )

    charts = [json.dumps(json.loads(element.proto.spec)) for element in at.get("plotly_chart")]
    for chart in charts:
        for tag in ("<img", "<script", "<b>"):  # Plotly renders these tags; Markdown and directives mean nothing to it
            assert tag not in chart, f"{page}: a chart label holds the tag {tag}"
    if page.endswith("compare.py"):  # its charts name every class
        assert any("&lt;img src=x onerror=alert(1)&gt;" in chart for chart in charts), (
            f"{page}: class names are missing from its charts"
        )

    csv_cells = {cell for file_name, text in downloads for row in _check_csv(file_name, text) for cell in row}
    if downloads and page.endswith(
        ("compare.py", "classify.py")
    ):  # their CSVs name classes: neutralised, still readable
        assert any("'" + name in csv_cells for name in FORMULA_NAMES), (
            f"{page}: no formula-looking class name in its CSVs"
        )

    if page.endswith("dataset.py"):
        assert f"{UNREADABLE} (unreadable)" in gallery_captions, gallery_captions
        assert set(CLASSES) <= _plain_texts(at), "Dataset: a class is not shown as text"
    elif page.endswith("compare.py"):
        assert downloads, "Compare offers CSV downloads"
        assert set(CLASSES) <= _plain_texts(at), "Compare: a class is not shown as text"
        skipped = [frame.value for frame in at.dataframe if "reason" in frame.value.columns]
        assert skipped and any(str(path).endswith(UNREADABLE) for path in skipped[0]["file"])
    elif page.endswith("home.py"):
        assert DATASET_NAME in shown, "Home: the dataset's name is not shown literally"


def test_bar_table_writes_names_as_text_and_bars_to_scale():
    import pandas as pd

    from tests.helpers.bar_tables import check_markup
    from ui.widgets import bar_table_html

    table = pd.DataFrame({"class": HOSTILE_FILE_NAMES[:2], "train": [30, 15], "total": [40, 20]})
    body = bar_table_html(table, bars=["train"], largest=30, colour="#123456", background="#ffffff")
    rows = check_markup(body)  # fails on any tag or attribute bar_table_html does not write
    first, second = HOSTILE_FILE_NAMES[:2]
    assert rows == [["class", "train", "total"], [first, "30", "40"], [second, "15", "20"]]
    assert body.count("width:100.0%") == 1 and body.count("width:50.0%") == 1, "bars scale to largest"
    assert "width:0.0%" in bar_table_html(table, bars=["train"], largest=0, colour="#000", background="#fff")
