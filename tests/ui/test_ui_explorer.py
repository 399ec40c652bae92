"""Unit tests of ui.explorer's pure helpers: traces per colouring, scores, parameters a small map allows."""

from __future__ import annotations

import numpy as np
import pytest

from core.maps.projection import MapParams
from ui import explorer
from ui.charts import class_colours


def _points(n: int = 6):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 2)), np.arange(10, 10 + n), np.array([0, 0, 1, 1, 2, 2][:n])


def test_class_traces_use_one_colour_per_class_index():
    embedding, rows, labels = _points()
    traces = explorer.panel_traces(
        embedding, rows, labels=labels, predicted=-np.ones(6, int), class_names=("a", "b", "c"), colour_by="class"
    )
    assert [t.name for t in traces] == ["a", "b", "c"]
    assert [t.colour for t in traces] == class_colours(3)
    assert [list(t.rows) for t in traces] == [[10, 11], [12, 13], [14, 15]]


def test_score_traces_carry_values_and_leave_unscored_points_grey():
    embedding, rows, labels = _points()
    score = np.array([0.1, np.nan, 0.5, 0.9, np.nan, 0.3])
    traces = explorer.panel_traces(
        embedding,
        rows,
        labels=labels,
        predicted=-np.ones(6, int),
        class_names=("a", "b", "c"),
        colour_by="score",
        score=score,
    )
    grey, scored = traces
    assert grey.name == explorer.NOT_SCORED and list(grey.rows) == [11, 14] and grey.values is None
    assert list(scored.rows) == [10, 12, 13, 15] and list(scored.values) == [0.1, 0.5, 0.9, 0.3]
    np.testing.assert_array_equal(scored.x, embedding[[0, 2, 3, 5], 0])
    assert explorer.score_range(score) == (0.1, 0.9)
    with pytest.raises(ValueError, match="one score per point"):
        explorer.panel_traces(embedding, rows, labels=labels, predicted=labels, class_names=("a",), colour_by="score")


def test_confidence_score_is_the_runs_confidence_per_dataset_row():
    score = explorer.confidence_score({"id": 4}, {1: (2, 0.75), 3: (0, 0.5)}, n_rows=5)
    np.testing.assert_array_equal(score.values, [np.nan, 0.75, np.nan, 0.5, np.nan])
    assert score.key == "confidence:4" and "#4" in score.name


def test_correct_traces_split_by_the_chosen_predictions():
    embedding, rows, labels = _points()
    predicted = np.array([0, 1, 1, -1, 2, 0])
    traces = explorer.panel_traces(
        embedding, rows, labels=labels, predicted=predicted, class_names=("a", "b", "c"), colour_by="correct"
    )
    by_name = {t.name: list(t.rows) for t in traces}
    assert by_name == {"correct": [10, 12, 14], "incorrect": [11, 15], explorer.NOT_PREDICTED: [13]}


def test_parameters_shrink_to_what_a_small_map_allows_and_say_so():
    from core.maps.projection import check_map_params, fit_map_params  # the one rule the Explorer and Classify use

    params, note = fit_map_params("tsne", MapParams(perplexity=30), 31)
    assert params.perplexity == 10 and "lowered from 30" in note
    check_map_params("tsne", params, 31)  # what it shrinks to is what the check allows
    params, note = fit_map_params("umap", MapParams(n_neighbors=15), 10)
    assert params.n_neighbors == 9 and "lowered from 15" in note
    check_map_params("umap", params, 10)
    assert fit_map_params("pca", MapParams(perplexity=30), 6) == (MapParams(perplexity=30), "")
    assert fit_map_params("tsne", MapParams(perplexity=5), 31) == (MapParams(perplexity=5), "")


def test_health_scores_land_on_their_dataset_rows(tmp_path):
    from types import SimpleNamespace

    root = tmp_path / "data"
    paths = [root / "a" / "1.jpg", root / "a" / "2.jpg", root / "b" / "3.jpg"]
    dataset = SimpleNamespace(root=root, image_paths=paths)
    # The report numbers its images by its own paths (here in another order, one image not analysed).
    report = SimpleNamespace(
        backbone="resnet50",
        paths=["b/3.jpg", "a/1.jpg"],
        label_issues=[{"image": 1, "score": 0.2}],
        outliers=[{"image": 0, "score": 0.9}, {"image": 1, "score": 0.1}],
    )
    label, outlier = explorer.health_scores(report, dataset)
    np.testing.assert_array_equal(label.values, [0.2, np.nan, np.nan])
    np.testing.assert_array_equal(outlier.values, [0.1, np.nan, 0.9])
    assert "label quality" in label.name and "resnet50" in outlier.name and label.key != outlier.key


def test_default_runs_give_one_map_per_backbone_and_weights():
    # Newest first, as the registry lists them: the offline demo's pair is one backbone under two weights.
    # The rule: the best on validation of each (backbone, weights), for the MAX_PANELS trained last.
    def run(run_id, backbone, weights, valid):
        return {
            "id": run_id,
            "backbone": backbone,
            "weights": weights,
            "status": "completed",
            "shots": None,
            "test_acc": 50.0,
            "metrics": {"valid_acc": valid},
            "confusion": [[1, 0], [0, 1]],
        }

    runs = [
        run(5, "efficientnet_lite0", "random", 40.0),
        run(4, "efficientnet_lite0", "random", 70.0),
        run(3, "efficientnet_lite0", "pretrained", 90.0),
        run(2, "efficientnet_lite0", "random", 60.0),
        run(1, "resnet50", "random", 99.0),
    ]
    assert [r["id"] for r in explorer.default_runs(runs)] == [3, 4]
