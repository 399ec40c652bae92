"""The dashboard's pages under Streamlit's AppTest: empty and populated workspaces, jobs launched and
cancelled from the Train page, bad dataset folders, and class names that look like HTML or Markdown.

Pages run through the real entry script (``dashboard.py``, ``st.navigation``), so page links and the
sidebar are exercised too. Render times with the populated workspace are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.base.progress import ProgressEvent
from core.probing.experiment import run_comparison
from core.probing.heads import HeadConfig
from tests.helpers.bar_tables import bar_tables
from tests.helpers.image_catalogue import HOSTILE_FILE_NAMES
from tests.helpers.photo_grids import photo_grids

ROOT = Path(__file__).resolve().parents[2]
RENDER_TIMEOUT_S = 60  # a cap so a hung page fails instead of blocking the suite; render times are bench/pages.py's


@pytest.fixture(scope="session")
def entry_script() -> Path:
    """``dashboard.py`` itself: a page it lists that does not exist fails these tests, as it would fail the app."""
    return ROOT / "dashboard.py"


def all_pages() -> list[str]:
    """The page scripts the entry file routes over (``ui.navigation``'s menu and not-found page), as AppTest's
    switch_page takes them."""
    from ui.navigation import NOT_FOUND, PAGES

    return [page.script for page in (*PAGES, NOT_FOUND)]


def test_the_navigation_lists_every_page_file_once(entry_script):
    # The page tests below render what the navigation lists; this makes that every page of pages/.
    listed = all_pages()
    assert len(listed) == len(set(listed)), f"a page is listed twice: {listed}"
    assert sorted(listed) == sorted(
        f"pages/{path.name}" for path in (ROOT / "pages").glob("*.py") if path.name != "__init__.py"
    )


def open_page(entry: Path, page: str, **query: str) -> AppTest:
    at = AppTest.from_file(str(entry), default_timeout=RENDER_TIMEOUT_S)
    at.query_params.update(query)
    at.run()
    at.switch_page(page).run()
    if page.endswith("compare.py"):  # every view, so every label, chart and gallery is checked
        from ui.compare import VIEWS, VIEWS_KEY

        at.button_group(key=VIEWS_KEY).set_value(list(VIEWS)).run()
    assert not at.exception, f"{page}: {[e.message for e in at.exception]}"
    return at


def texts(at: AppTest, *kinds: str) -> list[str]:
    return [str(element.value) for kind in kinds for element in at.get(kind)]


def unescaped(markdown: str) -> str:
    """What the reader sees of Markdown whose punctuation was backslash-escaped (ui.labels)."""
    return re.sub(r"\\(.)", r"\1", markdown)


def markdown_sources(at: AppTest) -> list[str]:
    """Everything Streamlit renders as Markdown: markdown, captions, alerts (galleries are HTML:
    tests.helpers.photo_grids).
    """
    return texts(at, "markdown", "caption", "info", "warning", "error", "success")


def dataframe_strings(at: AppTest) -> set[str]:
    """Every cell and header of the page's tables: dataframes, and bar tables (their markup checked there)."""
    return {
        str(v)
        for frame in at.dataframe
        for v in frame.value.astype(str).to_numpy().ravel().tolist() + list(frame.value.columns)
    } | {cell for table in bar_tables(at) for row in table for cell in row}


def plotly_specs(at: AppTest) -> list[str]:
    return [element.proto.spec for element in at.get("plotly_chart")]


def test_every_page_renders_with_an_empty_workspace(workspace, entry_script):
    at = AppTest.from_file(str(entry_script), default_timeout=RENDER_TIMEOUT_S).run()
    for page in all_pages():
        at.switch_page(page).run()
        assert not at.exception, f"{page}: {[e.message for e in at.exception]}"
        if page == "pages/home.py":
            assert any("No runs yet" in t for t in texts(at, "info"))
            warning = " ".join(texts(at, "warning"))
            for file in ("17flowers.tgz", "datasplits.mat", "dinov2_vits14_pretrain.pth", "resnet50-0676ba61.pth"):
                assert file in warning, f"the missing-files warning does not name {file}"
            demo = next(b for b in at.button if b.label == "Run the offline demo")
            assert not demo.disabled  # efficientnet_lite0's weights ship in a pip package
        elif page == "pages/dataset.py":
            assert any("17flowers.tgz" in t for t in texts(at, "info"))
            assert [b.label for b in at.button] == ["Download and prepare Oxford 17"]
            # One wording for Oxford 17's state (core.data.datasets.DatasetEntry.state), in the list and the
            # explanation.
            assert (
                at.selectbox[0].options[0]
                == "Oxford 17 flowers (not prepared: downloaded (about 60 MB) when first used)"
            )
            assert any("is not prepared: downloaded (about 60 MB) when first used" in t for t in texts(at, "info"))
        elif page == "pages/health.py":
            assert any("No dataset is prepared yet" in t for t in texts(at, "info"))
        elif page == "pages/train.py":
            assert at.selectbox(key="train_dataset").value == "synthetic"  # offline: no download needed
            assert at.button(key="train_launch").label == "Launch"
        elif page == "pages/compare.py":
            assert any("No completed runs yet" in t for t in texts(at, "info"))
            assert "train" in {link.proto.page for link in at.get("page_link")}


def test_every_page_renders_with_a_populated_workspace(populated_workspace, entry_script):
    at = AppTest.from_file(str(entry_script), default_timeout=RENDER_TIMEOUT_S)
    for index, page in enumerate(all_pages()):
        # Twice: cold (caches empty), then warm (what a user sees on every click; its timings are bench/pages.py's).
        for render in range(2):
            (at if index == 0 and not render else at.switch_page(page)).run()  # the first run opens the default page
            assert not at.exception, f"{page}: {[e.message for e in at.exception]}"
        if page == "pages/home.py":
            assert [m.value for m in at.metric][2] == "2"  # completed runs
            assert len(at.dataframe[0].value) == 2
        elif page == "pages/dataset.py":
            assert at.selectbox[0].value == "synthetic"
            assert len(photo_grids(at)) == 17  # one row of samples per class
            (counts,) = bar_tables(at)  # images per class: a header and one row per class
            assert counts[0] == ["class", "train", "val", "test", "total"] and len(counts) == 1 + 17, counts[:2]
            assert all(int(row[4]) == sum(int(cell) for cell in row[1:4]) for row in counts[1:])
            assert any("badge[" in t and "Synthetic data" in t for t in texts(at, "markdown"))
        elif page == "pages/compare.py":
            table = at.dataframe[0].value
            assert len(table) == 2
            assert set(table["backbone"]) == {"efficientnet_lite0", "resnet50"}
            assert set(table["weights"]) == {"pretrained", "random weights"}
            assert all("(synthetic)" in name for name in table["dataset"])
            assert len(at.get("download_button")) == 2
            assert not plotly_specs(at), "the overview draws no chart"
            from ui.compare import VIEWS, VIEWS_KEY

            at.button_group(key=VIEWS_KEY).set_value(list(VIEWS)).run()
            assert not at.exception, [e.message for e in at.exception]
            # accuracy vs cost, the reliability diagrams, curves, two confusion matrices, per-class bars
            assert len(plotly_specs(at)) == 1 + 1 + 1 + 2 + 1


def test_train_page_launches_a_job_that_finishes_and_shows_in_compare(populated_copy, entry_script):
    from ui.state import job_runner

    # resnet50 with random weights: the populated copy has its features cached, so the job trains only the head.
    at = open_page(entry_script, "pages/train.py")
    at.selectbox(key="train_dataset").set_value("synthetic").run()
    at.multiselect(key="train_backbones").set_value(["resnet50@random"])
    at.number_input(key="train_epochs").set_value(2)
    at.toggle(key="train_standardise").set_value(True)
    at.button(key="train_launch").click().run()
    assert not at.exception
    queued = [t for t in texts(at, "success") if "Queued as job" in t]
    assert queued, texts(at, "success", "error")
    job_id = int(re.search(r"job (\d+)", queued[0]).group(1))

    job = job_runner().wait(job_id, timeout_s=240)
    assert job.status == "completed", job.error
    assert len(job.run_ids) == 1 and [e["epoch"] for e in job.epochs] == [1, 2]

    at.run()  # the job list shows the finished job
    assert any(f"Job {job_id}" in t and "completed" in t for t in texts(at, "markdown"))
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    new = table[table["run"] == job.run_ids[0]]  # shown by default: the newest run
    assert len(new) == 1
    assert new["weights"].tolist() == ["random weights"] and new["head"].tolist() == ["mlp · standardised"]
    from ui.compare import VIEWS_KEY

    at.button_group(key=VIEWS_KEY).set_value(["Misclassified"]).run()  # one tab of photos per run
    from core.runs.naming import run_name
    from core.runs.registry import RunRegistry

    recorded = RunRegistry(populated_copy.registry_path).get_run(job.run_ids[0])
    assert recorded["protocol"] == "mlp" and recorded["shots"] is None  # what `compare` records: the reference MLP
    labels = [tab.label for tab in at.tabs]
    assert run_name(recorded) in labels, labels  # the run's one name (core.runs.naming)
    assert run_name(recorded).startswith(f"#{job.run_ids[0]} resnet50 · random weights · gap standardised · ")

    # The head file carries the training statistics: predicting test images again gives the stored answers.
    from core.predict.classify import Predictor
    from core.runs.files import RunFiles
    from core.runs.registry import RunRegistry

    registry = RunRegistry(populated_copy.registry_path)
    stored = registry.predictions(job.run_ids[0])[:8]  # a few: each is a ResNet-50 forward on the CPU
    photos = RunFiles(registry.get_run(job.run_ids[0]), populated_copy).images([s["path"] for s in stored])
    predictor = Predictor.from_run(job.run_ids[0], workspace=populated_copy)
    again = predictor.predict([(photo.name, photo) for photo in photos])
    answered = np.array([p.probabilities for p in again], dtype=np.float64)
    if predictor.temperature is not None:  # calibrated answers (logits / T): back to the plain softmax stored
        answered = answered**predictor.temperature
        answered /= answered.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(answered, [s["probabilities"] for s in stored], atol=1e-5)


def test_train_page_shows_bad_input_and_cancels_a_running_job(workspace, entry_script):
    from ui.state import job_runner

    at = open_page(entry_script, "pages/train.py")
    at.number_input(key="train_lr").set_value(0.0)
    at.button(key="train_launch").click().run()
    assert any("lr must be a positive number" in t for t in texts(at, "error"))

    def slow_features(context):  # stands in for a long extraction: progress reports are where cancels land
        for done in range(1, 2001):
            context.progress(ProgressEvent("features", done, 2000, rate=12.5))
            time.sleep(0.05)

    runner = job_runner()
    job = runner.submit("Slow test job", slow_features)
    deadline = time.monotonic() + 120  # the shared runner may still be finishing another test's job
    while runner.get(job.id).stage is None and time.monotonic() < deadline:
        time.sleep(0.05)
    at.run()
    bars = [unescaped(p.proto.text) for p in at.get("progress")]
    assert any(re.search(r"Feature extraction: \d+/2000 images · 12\.5 images/s", text) for text in bars), bars
    at.button(key=f"cancel-job-{job.id}").click().run()
    assert runner.wait(job.id, timeout_s=30).status == "cancelled"
    at.run()
    assert any("Cancelled by the user" in t for t in texts(at, "warning"))


def _copy_images(source: Path, destination: Path, count: int) -> None:
    destination.mkdir(parents=True)
    for image in sorted(source.glob("*.jpg"))[:count]:
        shutil.copy(image, destination / image.name)


def test_bad_dataset_folders_show_a_clear_message(workspace, tiny_synthetic_folder, entry_script):
    classes = sorted(p for p in (tiny_synthetic_folder / "train").iterdir())
    _copy_images(classes[0], workspace.data_root / "one-class" / "roses", 3)
    _copy_images(classes[0], workspace.data_root / "empty-class" / "roses", 3)
    (workspace.data_root / "empty-class" / "tulips").mkdir()
    cases = {
        "folder:one-class": "at least two",
        "folder:empty-class": "fewer than 3",
        "folder:../../outside": "data root",
    }
    for key, expected in cases.items():
        at = open_page(entry_script, "pages/dataset.py", dataset=key)
        errors = unescaped(" ".join(texts(at, "error")))
        assert expected in errors, (key, errors)
        assert any("at least two class folders" in t for t in texts(at, "info"))


def test_hostile_class_names_show_as_literal_text(workspace, tiny_synthetic_folder, entry_script):
    """Class folders named like HTML and Markdown, and one unreadable file, on Dataset and Compare."""
    root = workspace.data_root / "hostile"
    classes = sorted(p for p in (tiny_synthetic_folder / "train").iterdir())
    for name, source in zip(HOSTILE_FILE_NAMES, classes):
        _copy_images(source, root / name, 4)
    (root / HOSTILE_FILE_NAMES[0] / "broken.jpg").write_bytes(b"not a jpeg at all")
    run_comparison(
        dataset="folder:hostile",
        backbones=["efficientnet_lite0"],
        random_weights_for=("efficientnet_lite0",),
        head=HeadConfig(epochs=1),
        workspace=workspace,
    )

    raw_html = re.compile(r"(?<!\\)<(img|script)")
    for page in ("pages/dataset.py", "pages/compare.py"):
        at = open_page(entry_script, page, dataset="folder:hostile")
        shown = dataframe_strings(at)
        for name in HOSTILE_FILE_NAMES:
            assert name in shown, f"{page}: class {name!r} is not shown as text"
        for source in markdown_sources(at):
            assert not raw_html.search(source), f"{page}: unescaped HTML in Markdown {source!r}"
            assert "**bold**" not in source and "](javascript" not in source, (
                f"{page}: unescaped Markdown in {source!r}"
            )
        charts = [
            json.dumps(json.loads(spec)) for spec in plotly_specs(at)
        ]  # Plotly renders some HTML: names must be entities
        assert not any("<img" in chart or "<script" in chart for chart in charts)
        captions = [caption for grid in photo_grids(at) for caption in grid]  # each grid's markup checked there
        if page == "pages/dataset.py":
            assert "broken.jpg (unreadable)" in captions, captions
        else:
            assert any("&lt;img src=x onerror=alert(1)&gt;" in chart for chart in charts)
            skipped = [frame.value for frame in at.dataframe if "reason" in frame.value.columns]
            assert skipped and any(str(path).endswith("broken.jpg") for path in skipped[0]["file"])
