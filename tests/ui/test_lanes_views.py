"""Issue 25's Compare helpers: where a probe curve crosses the zero-shot line, and the layer-wise figure."""

from __future__ import annotations

import math

import pytest


def test_crossing_interpolates_on_log_images_per_class() -> None:
    from ui.lanes import crossing

    curve = [{"x": 1, "mean": 30.0}, {"x": 4, "mean": 50.0}, {"x": 16, "mean": 70.0}]
    # 40 % is half-way from 30 to 50, so half-way between log 1 and log 4: 2 images per class.
    assert crossing(curve, 40.0) == pytest.approx(2.0)
    assert crossing(curve, 60.0) == pytest.approx(math.exp((math.log(4) + math.log(16)) / 2))
    assert crossing(curve, 20.0) == 1.0  # above from the first level
    assert crossing(curve, 80.0) is None  # never reaches it


def test_crossing_text_names_each_curve_of_the_zero_shot_backbone() -> None:
    from ui.lanes import crossing_text

    points = [
        {"backbone": "clip", "weights": "pretrained", "label": "clip · linear", "x": 1, "mean": 30.0},
        {"backbone": "clip", "weights": "pretrained", "label": "clip · linear", "x": 4, "mean": 50.0},
        {"backbone": "other", "weights": "pretrained", "label": "other · linear", "x": 1, "mean": 90.0},
    ]
    lines = [{"backbone": "clip", "weights": "pretrained", "accuracy": 40.0, "interval": (35.0, 45.0)}]
    (sentence,) = crossing_text(points, lines)
    assert "clip · linear crosses it at about 2 labelled images per class" in sentence


def test_layerwise_figure_marks_the_best_block() -> None:
    from ui.lanes import layerwise_figure

    runs = [
        {
            "backbone": "dinov2_vits14",
            "weights": "random",
            "protocol": "knn",
            "features": f"layer:block{i}",
            "test_acc": acc,
            "metrics": {"test_acc_ci": [acc - 5, acc + 5]},
        }
        for i, acc in ((1, 20.0), (6, 55.0), (12, 40.0))
    ]
    figure = layerwise_figure(runs, n_classes=17)
    line, star = figure.data[0], figure.data[1]
    assert list(line.x) == [1, 6, 12] and list(line.y) == [20.0, 55.0, 40.0]
    assert list(star.x) == [6] and star.text[0] == "best: block6"
