"""The Explorer's linked maps (issue 26) and selection tables (issue 21): neighbour agreement as a colour, "only where
they disagree", box/lasso selections that grey the rest, the tooltip's verdict and split, the per-class summary.

Pure helpers are checked against hand-made cases; the page under AppTest against independent computations (the
neighbour agreement recomputed here with scikit-learn from the runs' cached features). The greying itself is drawn
by plotly.js: tests/browser/test_explorer_browser.py checks it in Chromium.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from core.base.errors import FlowerProbeError
from core.data.datasets import load_dataset
from core.features.extract import read_features
from core.runs.files import RunFiles
from core.runs.registry import RunRegistry
from tests.helpers.explorer_page import MAP_KEY, assert_no_exception, open_explorer, settle, spec_of, subheaders
from ui import explorer


@pytest.fixture(autouse=True)
def _no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_PROBE_PASSWORD", raising=False)


def test_verdicts_say_right_or_wrong_and_name_runs_only_when_they_differ():
    labels = np.array([0, 1, 2, 0])
    per_run = {3: {0: (0, 0.9), 1: (2, 0.5), 2: (2, 0.7)}, 4: {0: (0, 0.8), 1: (1, 0.6)}}
    assert explorer.verdict_texts(labels, per_run) == ["right", "#3 wrong · #4 right", "right", None]
    assert explorer.verdict_texts(labels, {3: {}}) is None


def test_split_texts_name_each_rows_part():
    parts = {"train": np.array([0, 3]), "val": np.array([1]), "test": np.array([4])}
    assert explorer.split_texts(parts, 6) == ["train", "val", None, "train", "test", None]


def test_selection_summary_counts_per_class_and_per_run():
    labels = np.array([0, 0, 0, 1, 1, 2])
    per_run = {7: {0: (0, 0.9), 1: (1, 0.5), 3: (1, 0.8)}}
    summary = explorer.selection_summary(
        [0, 1, 3, 5], labels=labels, class_names=("a", "b", "c"), on_map=np.arange(6), per_run=per_run
    )
    assert [entry["class"] for entry in summary] == ["a", "b", "c"]  # most selected first
    first = summary[0]
    assert first["selected"] == 2 and first["share of selection (%)"] == 50.0
    assert first["of the class on the map (%)"] == round(100 * 2 / 3, 1)
    assert (first["run #7 right"], first["run #7 wrong"]) == (1, 1)  # row 0 right, row 1 predicted b
    assert (summary[1]["run #7 right"], summary[1]["run #7 wrong"]) == (1, 0)
    assert (summary[2]["run #7 right"], summary[2]["run #7 wrong"]) == (0, 0), "row 5 was not predicted"
    assert explorer.selection_summary([], labels=labels, class_names=("a", "b", "c"), on_map=[], per_run={}) == []


def test_disagreeing_keeps_shares_below_the_threshold():
    assert explorer.disagreeing(np.array([0.0, 0.4, 0.5, 1.0]), below=0.5).tolist() == [True, True, False, False]
    with pytest.raises(FlowerProbeError, match=r"below must be a share in \(0, 1\]; got 0.0"):
        explorer.disagreeing(np.array([0.5]), below=0.0)


def _agreement_by_hand(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """|kNN_A(i) ∩ kNN_B(i)| / k by cosine, each image's own row left out: written here from scikit-learn alone."""

    def neighbours(x):
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        found = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(unit).kneighbors(unit)[1]
        return [set(row[row != i][:k].tolist()) for i, row in enumerate(found)]

    return np.array([len(x & y) / k for x, y in zip(neighbours(a), neighbours(b), strict=True)])


def test_colour_by_neighbour_agreement_and_only_where_they_disagree(populated_workspace):
    at = open_explorer()
    at.selectbox(key="explorer_colour").set_value(explorer.AGREEMENT_MODE).run()
    at = settle(at)
    assert_no_exception(at)
    spec = spec_of(at)
    registry = RunRegistry(populated_workspace.registry_path)
    runs = sorted(registry.list_runs(status="completed"), key=lambda run: run["id"])
    features = [read_features(RunFiles(run, populated_workspace).features) for run in runs]
    rows = np.intersect1d(features[0].rows, features[1].rows)
    expected = _agreement_by_hand(features[0].select(rows)[0], features[1].select(rows)[0], k=10)
    for panel in spec["panels"]:
        assert panel["colourBar"]["low"] == 0.0 and panel["colourBar"]["high"] == 1.0
        assert "neighbour agreement" in panel["colourBar"]["title"]
        scored = [trace for trace in panel["traces"] if trace["values"] is not None]
        got = dict(zip(scored[0]["rows"], scored[0]["values"]))
        assert sorted(got) == rows.tolist()
        np.testing.assert_allclose([got[row] for row in rows.tolist()], expected, atol=1e-4)

    at.toggle(key="explorer_disagree").set_value(True).run()
    at.slider(key="explorer_disagree_below").set_value(0.5).run()
    at = settle(at)
    assert_no_exception(at)
    shown = sorted(row for trace in spec_of(at)["panels"][0]["traces"] for row in trace["rows"])
    assert shown == rows[expected < 0.5].tolist()
    assert any("Only where they disagree" in caption.value for caption in at.caption)


def test_a_lasso_greys_the_rest_and_a_click_rings(populated_workspace):
    dataset = load_dataset("synthetic", populated_workspace)
    at = open_explorer()
    at.session_state[MAP_KEY] = {"event": "select", "rows": [3, 4, 9], "seq": 11}
    at.run()
    assert_no_exception(at)
    arguments = json.loads(at.get("component_instance")[0].proto.json_args)
    assert arguments["selected"] == [3, 4, 9] and arguments["dim"] is True
    assert "Selected photos (3)" in subheaders(at)
    table = at.table[0].value
    classes = [dataset.class_names[dataset.labels[row]] for row in (3, 4, 9)]
    assert dict(zip(table.index, table["selected"])) == {name: classes.count(name) for name in set(classes)}
    assert {button.label for button in at.get("download_button")} >= {
        "Download the summary (CSV)",
        "Download the selected photos (CSV)",
    }

    at.session_state[MAP_KEY] = {"event": "click", "rows": [4], "seq": 12}
    at.run()
    arguments = json.loads(at.get("component_instance")[0].proto.json_args)
    assert arguments["selected"] == [4] and arguments["dim"] is False


def test_the_tooltip_text_carries_the_split_and_the_verdict(populated_workspace):
    dataset = load_dataset("synthetic", populated_workspace)
    at = open_explorer()
    text = spec_of(at)["text"]
    parts = dataset.split("1")
    for part, members in parts.items():
        for row in members[:3].tolist():
            assert text["strings"][text["split"][row]] == part
            verdict = text["verdict"][row]
            if part == "test":
                assert text["strings"][verdict].replace("#", "").split()[-1] in ("right", "wrong")
            else:
                assert verdict == -1
