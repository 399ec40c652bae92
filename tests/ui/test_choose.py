"""The Compare page's choosing views (ui.choose): accuracy against cost, calibration, labels needed; pure parts."""

from __future__ import annotations

import numpy as np
import pytest

from core.probing.calibration import calibration_record, softmax
from core.probing.labels_needed import fit_learning_curve, labels_needed, power_law
from ui import choose


def _cost(backbone: str, images_per_s: float, *, precision="fp32", device="CPU (x86_64, 2 cores)") -> dict:
    return {
        "backbone": backbone,
        "weights_tag": "random",
        "precision": precision,
        "device": device,
        "images_per_s_model": images_per_s,
        "images_per_s_end_to_end": images_per_s / 2,
        "latency_ms_median": 50.0,
        "latency_ms_p95": 60.0,
        "forward_memory_bytes": 300 * 2**20,
        "parameters": 21_000_000,
        "flops_per_image": 4_600_000_000,
        "feature_dim": 384,
        "weights_file_bytes": None,
        "batch_size": 64,
        "load_before": [3.0, 2.0, 1.0],
        "busy": "measured while other work ran (load average 3.0 on 2 cores)",
    }


def _metrics(accuracy: float, calibration: dict | None) -> dict:
    metrics = {"test_acc_ci": [accuracy - 3, accuracy + 2]}
    if calibration:
        metrics["calibration"] = calibration
    return metrics


def _run(run_id: int, backbone: str, accuracy: float, *, protocol="mlp", calibration=None) -> dict:
    return {
        "id": run_id,
        "backbone": backbone,
        "weights": "random",
        "weights_tag": "random",
        "precision": "fp32",
        "device": "CPU (x86_64, 2 cores)",
        "protocol": protocol,
        "features": "cls",
        "split": "1",
        "seed": 0,
        "shots": None,
        "title": None,
        "config": {"head": {"architecture": "mlp"}},
        "test_acc": accuracy,
        "metrics": _metrics(accuracy, calibration),
    }


COSTS = {"a": _cost("fast_net", 100.0), "b": _cost("slow_net", 10.0)}


def test_points_front_and_columns():
    runs = [_run(1, "fast_net", 80.0), _run(2, "slow_net", 90.0), _run(3, "unmeasured_net", 95.0)]
    points, missing = choose.cost_points(runs, COSTS, axis="ms / image")
    assert [p["x"] for p in points] == [10.0, 100.0] and [r["id"] for r in missing] == [3]
    figure = choose.accuracy_cost_figure(points, axis="ms / image")
    assert figure.layout.xaxis.type == "log"
    front = [t for t in figure.data if t.name == "Pareto front"]
    assert len(front) == 1 and list(front[0].x) == [10.0, 100.0]  # both on the front: cheaper vs more accurate
    hover = figure.data[0].hovertemplate
    assert "protocol" in hover and "images/s" in hover and "GFLOPs" in hover and "load average" in hover
    columns = choose.cost_columns(runs, COSTS)
    assert columns["ms / image"] == [10.0, 100.0, None] and columns["parameters M"][0] == 21.0


def test_a_dominated_run_is_off_the_front():
    runs = [_run(1, "fast_net", 90.0), _run(2, "slow_net", 80.0)]  # the fast one is also more accurate
    points, _ = choose.cost_points(runs, COSTS, axis="images / s")
    figure = choose.accuracy_cost_figure(points, axis="images / s")
    front = [t for t in figure.data if t.name == "Pareto front"]
    assert len(front) == 1 and list(front[0].x) == [100.0] and front[0].mode == "markers"  # one ringed point


def test_speed_clause_says_how_much_faster():
    clause = choose.speed_clause(_run(1, "slow_net", 90.0), _run(2, "fast_net", 80.0), COSTS)
    assert "10.0x faster" in clause and clause.index("fast_net") < clause.index("slow_net")
    assert choose.speed_clause(_run(1, "slow_net", 90.0), _run(2, "unmeasured", 80.0), COSTS) == ""


def _calibration(protocol="linear"):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 4)) * 4
    labels = np.array([rng.choice(4, p=p) for p in softmax(logits / 4)])
    return calibration_record(
        protocol=protocol,
        valid_logits=logits[:100],
        valid_labels=labels[:100],
        test_logits=logits[100:] if protocol != "knn" else None,
        test_scores=softmax(logits[100:]),
        test_labels=labels[100:],
    )


def test_reliability_diagram_has_bars_by_count_and_both_panels():
    record = _calibration()
    figure = choose.reliability_figure(record, title="run 1")
    bars = [t for t in figure.data if t.type == "bar"]
    assert len(bars) == 2  # as trained, temperature-scaled
    counts = np.array(record["before"]["bins"]["count"])
    widths = np.asarray(bars[0].width)
    assert widths.max() == pytest.approx(1 / 15) and len(widths) == np.count_nonzero(counts)
    frame = choose.calibration_frame([_run(1, "a", 80.0, calibration=record)])
    assert frame.loc[0, "ECE %"] == pytest.approx(record["before"]["ece"] * 100, abs=0.01)
    knn = choose.reliability_figure(_calibration("knn"), title="knn")
    assert len([t for t in knn.data if t.type == "bar"]) == 1  # vote shares: one panel, not calibrated


def test_labels_figure_marks_the_answer():
    shots = [1, 2, 4, 8, 16]
    rng = np.random.default_rng(0)
    draws = [list(power_law(n, 90, 40, 0.6) + rng.normal(size=3)) for n in shots]
    fit = fit_learning_curve(shots, draws, replicates=30)
    answer = labels_needed(fit, target=80.0)
    figure = choose.labels_figure(fit, label="<b>net</b>", target=80.0, n=answer.n)
    names = [t.name for t in figure.data]
    assert any("bootstrap band" in (n or "") for n in names)
    assert any("&lt;b&gt;net&lt;/b&gt;" in (t.hovertemplate or "") for t in figure.data)  # the name, escaped
    assert any((n or "").startswith("about ") for n in names)
