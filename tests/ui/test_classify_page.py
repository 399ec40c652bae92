"""AppTest of the Classify page: guidance without runs; uploads, test samples and a second run with runs.

The page runs under a small navigation entry (as dashboard.py runs it) so its ``st.page_link`` to the
Train page resolves; the Train page there is a stub, independent of the real one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.runs.registry import RunRegistry
from tests.helpers.image_catalogue import HOSTILE_FILE_NAMES, write_catalogue
from tests.helpers.photo_grids import photo_grids

CLASSIFY_PAGE = Path(__file__).resolve().parents[2] / "pages" / "classify.py"


@pytest.fixture
def app(tmp_path) -> AppTest:
    entry = tmp_path / "app" / "entry.py"
    (entry.parent / "pages").mkdir(parents=True)
    (entry.parent / "pages" / "train.py").write_text("import streamlit as st\nst.title('Train')\n")
    entry.write_text(
        "import streamlit as st\n"
        f"st.navigation([st.Page({str(CLASSIFY_PAGE)!r}, default=True), st.Page('pages/train.py')]).run()\n"
    )
    return AppTest.from_file(str(entry), default_timeout=300)


def _as_rendered(markdown: str) -> str:
    """What Markdown shows for text whose punctuation is backslash-escaped."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _markdown_texts(at: AppTest) -> list[str]:
    """Every string the page hands to a Markdown renderer."""
    texts = [
        e.value for kind in ("markdown", "caption", "warning", "info", "error", "subheader") for e in getattr(at, kind)
    ]
    return texts


def test_empty_workspace_shows_how_to_train(app, workspace):
    app.run()
    assert not app.exception
    assert len(app.info) == 1 and "No trained run yet" in app.info[0].value
    links = app.get("page_link")
    assert len(links) == 1 and links[0].proto.page == "train"


def test_uploads_samples_and_a_second_run(app, populated_workspace, tmp_path):
    runs = RunRegistry(populated_workspace.registry_path).list_runs(status="completed")
    best = max(runs, key=lambda r: (r["test_acc"], r["id"]))
    app.run()
    assert not app.exception and not app.error
    assert app.selectbox[0].value == best["id"]

    catalogue = tmp_path / "catalogue"
    entries = write_catalogue(catalogue)
    good = (catalogue / entries["rgb_jpeg"].filename).read_bytes()
    app.file_uploader[0].set_value(
        [
            ("good.jpg", good, "image/jpeg"),
            (HOSTILE_FILE_NAMES[2] + ".jpg", good, "image/jpeg"),
            ("notes.jpg", (catalogue / entries["not_an_image"].filename).read_bytes(), "image/jpeg"),
        ]
    )
    app.multiselect[0].set_value([app.multiselect[0].options[0]])
    app.run()
    assert not app.exception and not app.error
    broken = [w for w in app.warning if w.icon == ":material/broken_image:"]  # others: "looks like no training image"
    assert len(broken) == 1 and _as_rendered(broken[0].value).startswith(
        "Cannot load image 'notes.jpg': the content is not"
    )
    table = app.dataframe[0].value
    assert list(table["file"])[:3] == ["good.jpg", HOSTILE_FILE_NAMES[2] + ".jpg", "notes.jpg"] and len(table) == 4
    assert (table["confidence"] != "").sum() == 3 and (table["error"] != "").sum() == 1
    assert not table.isin(["None", "nan"]).any().any(), "missing values show as empty cells"
    # Three classified images, each with a top-5 chart, plus the map.
    charts = app.get("plotly_chart")
    assert len(charts) == 3 + 1
    for chart in charts:  # Plotly labels: markup as entities, quotes left alone (Plotly shows &quot; literally)
        assert "&quot;" not in chart.proto.spec and "&#x27;" not in chart.proto.spec
    # Hostile names reach Markdown escaped: no raw tag survives anywhere.
    texts = _markdown_texts(app)
    assert all("<script>" not in text and "<img" not in text for text in texts)
    assert any(HOSTILE_FILE_NAMES[2] + ".jpg" in _as_rendered(text) for text in texts)  # shown, as text
    # The neighbour galleries are HTML: only their own markup, the class names in them as text.
    neighbour_captions = [caption for grid in photo_grids(app) for caption in grid]
    assert len(neighbour_captions) >= 3 and all(" · " in caption for caption in neighbour_captions)

    app.toggle[0].set_value(True)
    app.run()
    assert not app.exception and not app.error
    assert app.selectbox[1].value != app.selectbox[0].value
    assert len(app.get("plotly_chart")) == 2 * (3 + 1)
    assert any(column.startswith("confidence (run ") for column in app.dataframe[0].value.columns)


def test_runs_on_one_backbone_share_one_copy_of_it(app, populated_root, tmp_path, monkeypatch):
    import shutil

    import streamlit as st

    import core.backbones.registry
    from core.base.workspace import Workspace
    from core.probing.experiment import run_comparison
    from core.probing.heads import HeadConfig

    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    # A second head on the same backbone and weights (features cached: no backbone build here).
    second = run_comparison(
        dataset="synthetic",
        backbones=["efficientnet_lite0"],
        head=HeadConfig(epochs=1, seed=1),
        workspace=Workspace.from_env(),
    )[0]
    builds = []
    build = core.backbones.registry.build_backbone
    monkeypatch.setattr(
        core.backbones.registry, "build_backbone", lambda name, **kw: (builds.append(name), build(name, **kw))[1]
    )
    st.cache_resource.clear()  # other tests' pages may have cached this backbone already

    app.run()
    assert not app.exception and len(builds) == 1
    run_ids = [run["id"] for run in RunRegistry(root / "runs.sqlite").list_runs(status="completed")]
    assert len(run_ids) == 3 and second["id"] in run_ids
    for run_id in run_ids:
        app.selectbox[0].set_value(run_id).run()
        assert not app.exception and not app.error and app.selectbox[0].value == run_id
    # Three runs, two backbones: each backbone built once, whichever runs were shown.
    assert sorted(builds) == ["efficientnet_lite0", "resnet50"]


def test_map_methods_place_the_photos_with_the_explorers_class_colours(app, populated_workspace):
    import json

    from core.data.datasets import load_dataset
    from core.maps.projection import class_colours

    dataset = load_dataset("synthetic", populated_workspace)
    app.run()
    app.multiselect[0].set_value(app.multiselect[0].options[:2]).run()
    assert not app.exception and not app.error
    for method in ("tsne", "pca"):
        app.radio(key="classify_method").set_value(method).run()
        assert not app.exception and not app.error
        figure = json.loads(app.get("plotly_chart")[-1].proto.spec)
        colours = {
            trace["name"]: trace["marker"]["color"] for trace in figure["data"] if trace["name"] != "your images"
        }
        expected = dict(zip(dataset.class_names, class_colours(dataset.num_classes)))
        assert colours == {name: expected[name] for name in colours} and colours
        stars = next(trace for trace in figure["data"] if trace["name"] == "your images")
        assert len(stars["x"]) == 2


def test_a_foreign_photo_is_flagged_in_the_card_and_the_csv(app, populated_workspace):
    import io

    import numpy as np
    from PIL import Image

    board = (np.indices((256, 256)).sum(axis=0) // 32 % 2 * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(board).convert("RGB").save(buffer, format="PNG")
    app.run()
    app.file_uploader[0].set_value([("board.png", buffer.getvalue(), "image/png")])
    app.multiselect[0].set_value([app.multiselect[0].options[0]])  # and one test image of the dataset
    app.run()
    assert not app.exception and not app.error
    warnings = [_as_rendered(w.value) for w in app.warning if w.icon == ":material/help:"]
    assert len(warnings) == 1 and warnings[0].startswith("Looks like no training image"), warnings
    assert "Q3 + 3 IQR" in warnings[0]  # the threshold and where it comes from
    table = app.dataframe[
        0
    ].value  # the CSV is csv_text of the same rows (tests/core/predict/test_predict.py checks its cells)
    assert list(table["unfamiliar"]) == ["yes", "no"]


def test_missing_training_features_queue_an_extraction_job(app, populated_root, tmp_path, monkeypatch):
    import shutil

    from core.base.workspace import Workspace

    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    for path in Workspace.from_env().features_dir.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    app.run()
    assert not app.exception and not app.error
    info = " ".join(_as_rendered(i.value) for i in app.info)
    assert "no longer cached" in info and "queued as job" in info
    assert not app.file_uploader, "nothing to classify with until the job has finished"


def test_an_attentive_run_is_offered_and_classifies(app, tiny_synthetic_folder, tmp_path, monkeypatch):
    import json

    import numpy as np

    from core.base.workspace import Workspace
    from core.predict.classify import Predictor
    from tests.helpers.attentive_runs import build_attentive_workspace

    root = tmp_path / "workspace"
    run_id = build_attentive_workspace(root, tiny_synthetic_folder)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    app.run()
    assert not app.exception and not app.error
    assert app.selectbox[0].value == run_id and "attentive" in app.selectbox[0].options[0]
    app.multiselect[0].set_value([app.multiselect[0].options[0]]).run()
    assert not app.exception and not app.error
    # Its top classes are Predictor's (the head on the photo's patch tokens), with its neighbours and map.
    predictor = Predictor.from_run(run_id, workspace=Workspace.from_env(), device="cpu")
    row = int(app.multiselect[0].value[0])
    photo = predictor.dataset.image_paths[row]
    (expected,) = predictor.predict([(photo.name, photo)])
    bars = json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]
    assert bars["y"][::-1] == [name for name, _ in expected.top]
    np.testing.assert_allclose(bars["x"][::-1], [probability for _, probability in expected.top], atol=1e-6)
    assert len(app.get("plotly_chart")) == 1 + 1 and len(photo_grids(app)) == 1
    captions = [_as_rendered(c.value) for c in app.caption]
    assert any(c.startswith("The attentive head reads the photo's patch tokens") for c in captions)
    assert any("not of the patch tokens the attentive head reads" in c for c in captions)
