"""Choosing a backbone on the Compare page: accuracy against measured cost, calibrated confidence, labels needed.

Three views beside ``ui.compare``'s:

- **Accuracy vs cost**: test top-1 (95 % interval) against what the backbone costs on this machine
  (``core.cost``: ms per image by default, log axis; images/s, memory, parameters or FLOPs on a toggle), one
  point per run, the Pareto front drawn (``core.cost.pareto.pareto_front``), every cost figure in the hover, and
  a button that measures the backbones not measured yet (a job).
- **Calibration**: per run, ECE, NLL and Brier on the test part before and after temperature scaling, and a
  reliability diagram (``core.probing.calibration``).
- **Labels needed** (under the few-shot curves): the power law fitted to a curve, its bootstrap band, and how many
  labelled images per class a target accuracy needs (``core.probing.labels_needed``).

Figures are pure functions of data (tests build them); every user-controlled name goes through ``html_text``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.base.text import html_text, markdown_text
from core.cost.measure import COSTS_FILENAME, cost_for_run, measure_costs, stored_costs
from core.cost.pareto import pareto_front
from core.jobs.runner import progress_job
from core.probing.calibration import SCORE_KINDS
from core.probing.labels_needed import (
    EXTRAPOLATION_LIMIT,
    MIN_LEVELS,
    LearningCurveFit,
    curve_points,
    fit_learning_curve,
    labels_needed,
)
from core.runs.naming import protocol_name, run_name, weights_name
from ui.charts import run_colour
from ui.state import job_runner, user_errors, workspace

MEASURE_TITLE = "Measure the cost of {n} backbone(s)"
COST_AXIS_KEY = "cost_axis"
TARGET_KEY = "labels_target"
CURVE_KEY = "labels_curve"
DEFAULT_TARGET = 90.0
# The x axis choices: (value of a cost record, lower is better, axis title).
COST_AXES: dict[str, tuple] = {
    "ms / image": (lambda c: 1000.0 / c["images_per_s_model"], True, "ms per image, model only, extraction batch"),
    "images / s": (lambda c: c["images_per_s_model"], False, "images per second, model only, extraction batch"),
    "memory": (lambda c: c["forward_memory_bytes"] / 2**20, True, "memory a forward of a batch adds, MiB"),
    "parameters": (lambda c: c["parameters"] / 1e6, True, "parameters, millions"),
    "FLOPs": (lambda c: c["flops_per_image"] / 1e9, True, "GFLOPs per image (FlopCounterMode)"),
}


# ----------------------------------------------------------------------------------------------- reads


@st.cache_data(show_spinner=False, max_entries=4)
def _costs(path: str, mtime_ns: int) -> dict[str, dict]:
    return stored_costs(workspace())


def costs() -> dict[str, dict]:
    """The workspace's measured costs (``core.cost.measure.stored_costs``), re-read when the file changes."""
    path = workspace().root / COSTS_FILENAME
    try:
        stamp = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return {}
    return _costs(str(path), stamp)


# ----------------------------------------------------------------------------------------------- pure parts


def cost_columns(runs: Sequence[dict], measured: Mapping[str, dict]) -> dict[str, list]:
    """The runs table's cost and calibration columns, one value per run (None where not measured or recorded)."""
    found = [cost_for_run(measured, run) for run in runs]
    calibration = [(run.get("metrics") or {}).get("calibration") or {} for run in runs]

    def ece(c: dict, when: str) -> float | None:
        part = c.get(when) or {}
        return None if part.get("ece") is None else round(part["ece"] * 100, 2)

    return {
        "ms / image": [None if c is None else round(1000 / c["images_per_s_model"], 2) for c in found],
        "images/s": [None if c is None else round(c["images_per_s_model"], 1) for c in found],
        "images/s end to end": [None if c is None else round(c["images_per_s_end_to_end"], 1) for c in found],
        "latency ms (median)": [None if c is None else round(c["latency_ms_median"], 1) for c in found],
        "latency ms (p95)": [None if c is None else round(c["latency_ms_p95"], 1) for c in found],
        "forward memory MiB": [None if c is None else round(c["forward_memory_bytes"] / 2**20) for c in found],
        "parameters M": [None if c is None else round(c["parameters"] / 1e6, 2) for c in found],
        "GFLOPs / image": [None if c is None else round(c["flops_per_image"] / 1e9, 2) for c in found],
        "weights file MiB": [
            None if c is None or c["weights_file_bytes"] is None else round(c["weights_file_bytes"] / 2**20, 1)
            for c in found
        ],
        "cost measured under load": [None if c is None else c["load_before"][0] for c in found],
        "ECE %": [ece(c, "before") for c in calibration],
        "ECE % scaled": [ece(c, "after") for c in calibration],
        "temperature": [None if c.get("temperature") is None else round(c["temperature"], 3) for c in calibration],
    }


def cost_points(runs: Sequence[dict], measured: Mapping[str, dict], *, axis: str) -> tuple[list[dict], list[dict]]:
    """(points, runs without a measured cost): one point per run with ``x`` on ``axis`` and the run's accuracy."""
    value, _, _ = COST_AXES[axis]
    points, missing = [], []
    for run in runs:
        cost = cost_for_run(measured, run)
        if cost is None:
            missing.append(run)
            continue
        interval = (run.get("metrics") or {}).get("test_acc_ci")
        points.append(
            {
                "run": run["id"],
                "name": run_name(run),
                "protocol": protocol_name(run["protocol"]),
                "backbone": run["backbone"],
                "x": float(value(cost)),
                "accuracy": float(run["test_acc"]),
                "low": float(interval[0]) if interval else None,
                "high": float(interval[1]) if interval else None,
                "cost": cost,
            }
        )
    return points, missing


def _cost_hover(cost: Mapping) -> str:
    weights = (
        "no file (random)" if cost["weights_file_bytes"] is None else f"{cost['weights_file_bytes'] / 2**20:.1f} MiB"
    )
    return (
        f"{1000 / cost['images_per_s_model']:.1f} ms/image, {cost['images_per_s_model']:.1f} images/s model only "
        f"(batch {cost['batch_size']}), {cost['images_per_s_end_to_end']:.1f} images/s end to end<br>"
        f"latency of one image {cost['latency_ms_median']:.0f} ms median, {cost['latency_ms_p95']:.0f} ms p95<br>"
        f"forward memory +{cost['forward_memory_bytes'] / 2**20:.0f} MiB, "
        f"{cost['parameters'] / 1e6:.1f} M parameters, {cost['flops_per_image'] / 1e9:.2f} GFLOPs/image, "
        f"feature {cost['feature_dim']}, weights {weights}<br>"
        f"{html_text(cost['precision'])} on {html_text(cost['device'])}, load average {cost['load_before'][0]:.1f}"
    )


def accuracy_cost_figure(points: Sequence[Mapping], *, axis: str) -> go.Figure:
    """Test top-1 with its 95 % interval against ``axis`` (log), one marker per run, the Pareto front as a line."""
    _, lower_is_better, title = COST_AXES[axis]
    figure = go.Figure()
    for index, point in enumerate(points):
        has_interval = point["low"] is not None
        figure.add_scatter(
            x=[point["x"]],
            y=[point["accuracy"]],
            mode="markers",
            name=html_text(point["name"]),
            marker=dict(size=12, color=run_colour(index)),
            error_y=dict(
                type="data",
                array=[point["high"] - point["accuracy"]] if has_interval else [0],
                arrayminus=[point["accuracy"] - point["low"]] if has_interval else [0],
                visible=has_interval,
            ),
            hovertemplate=(
                f"<b>{html_text(point['name'])}</b><br>protocol {html_text(point['protocol'])}<br>"
                f"test top-1 %{{y:.1f}} %"
                + (f" (95 % CI {point['low']:.1f}-{point['high']:.1f})" if has_interval else "")
                + f"<br>{_cost_hover(point['cost'])}<extra></extra>"
            ),
        )
    front = pareto_front(
        [p["x"] for p in points], [p["accuracy"] for p in points], lower_cost_is_better=lower_is_better
    )
    if front:  # ringed points, joined by a dotted step line when there are several
        figure.add_scatter(
            x=[points[i]["x"] for i in front],
            y=[points[i]["accuracy"] for i in front],
            mode="lines+markers" if len(front) > 1 else "markers",
            line=dict(color="grey", dash="dot", shape="hv" if lower_is_better else "vh"),
            marker=dict(symbol="circle-open", size=22, color="grey", line=dict(width=2)),
            name="Pareto front",
            hoverinfo="skip",
        )
    figure.update_layout(
        height=460,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=-0.22, yanchor="top"),
        xaxis=dict(type="log", title=f"{title} (log)"),
        yaxis=dict(title="test top-1 %"),
    )
    return figure


def speed_clause(run_a: dict, run_b: dict, measured: Mapping[str, dict]) -> str:
    """``"; resnet50 is 6.8x faster here (12 vs 82 ms per image ...)"`` when both runs' costs are measured, else ""."""
    cost_a, cost_b = cost_for_run(measured, run_a), cost_for_run(measured, run_b)
    if cost_a is None or cost_b is None or cost_a["backbone"] == cost_b["backbone"]:
        return ""
    ms_a, ms_b = 1000 / cost_a["images_per_s_model"], 1000 / cost_b["images_per_s_model"]
    fast, slow, ms_fast, ms_slow = (run_a, run_b, ms_a, ms_b) if ms_a <= ms_b else (run_b, run_a, ms_b, ms_a)
    return (
        f" {run_name(fast)} is {ms_slow / ms_fast:.1f}x faster than {run_name(slow)} on this machine "
        f"({ms_fast:.0f} vs {ms_slow:.0f} ms per image, model only, measured by python -m core cost)."
    )


def reliability_figure(calibration: Mapping, *, title: str) -> go.Figure:
    """Accuracy against confidence per bin, bar width by the bin's share of images, the diagonal for reference;
    before temperature scaling and, when fitted, after it."""
    panels = [("before", "as trained")] + (
        [("after", f"temperature-scaled, T = {calibration['temperature']:.2f}")] if calibration.get("after") else []
    )
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels], shared_yaxes=True)
    for column, (when, _) in enumerate(panels, start=1):
        bins = calibration[when]["bins"]
        edges, counts = np.asarray(bins["edges"]), np.asarray(bins["count"], dtype=float)
        # Width by the bin's share of images (the widest bin fills its bin); at least a tenth, so one image shows.
        width = (edges[1] - edges[0]) * np.maximum(counts / max(counts.max(), 1), 0.1)
        centres = (edges[:-1] + edges[1:]) / 2
        shown = counts > 0
        figure.add_bar(
            x=centres[shown],
            y=[bins["accuracy"][i] for i in np.flatnonzero(shown)],
            width=width[shown],
            marker_color="#636EFA",
            name="accuracy in bin",
            showlegend=column == 1,
            customdata=np.stack([counts[shown], [bins["confidence"][i] for i in np.flatnonzero(shown)]], axis=1),
            hovertemplate=(
                "confidence %{x:.2f} bin: %{customdata[0]:.0f} images, mean confidence %{customdata[1]:.2f}, "
                "accuracy %{y:.2f}<extra></extra>"
            ),
            row=1,
            col=column,
        )
        figure.add_scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line=dict(color="grey", dash="dash"),
            name="perfectly calibrated",
            showlegend=column == 1,
            hoverinfo="skip",
            row=1,
            col=column,
        )
        figure.update_xaxes(range=[0, 1], title_text="confidence (top-1 score)", row=1, col=column)
    ece = " · ".join(
        f"ECE {calibration[when]['ece'] * 100:.1f} % {label}" for when, label in panels if calibration.get(when)
    )
    figure.update_yaxes(range=[0, 1], title_text="accuracy", row=1, col=1)
    figure.update_layout(
        title=dict(text=f"{html_text(title)}<br><sup>{html_text(ece)}</sup>", font=dict(size=14)),
        height=340,
        margin=dict(l=10, r=10, t=80, b=10),
        legend=dict(orientation="h", y=-0.25, yanchor="top"),
        bargap=0,
    )
    return figure


def calibration_frame(runs: Sequence[dict]) -> pd.DataFrame:
    """One row per run with a calibration record: what its scores are, ECE / NLL / Brier before and after, T."""
    rows = []
    for run in runs:
        calibration = (run.get("metrics") or {}).get("calibration")
        if not calibration:
            continue
        before, after = calibration["before"], calibration.get("after") or {}

        def number(part: dict, key: str, scale: float = 1.0, digits: int = 3) -> float | None:
            return None if part.get(key) is None else round(part[key] * scale, digits)

        rows.append(
            {
                "run": run_name(run),
                "scores": calibration["scores"],
                "ECE %": number(before, "ece", 100, 2),
                "ECE % scaled": number(after, "ece", 100, 2),
                "NLL": number(before, "nll"),
                "NLL scaled": number(after, "nll"),
                "Brier": number(before, "brier"),
                "Brier scaled": number(after, "brier"),
                "temperature": None if calibration["temperature"] is None else round(calibration["temperature"], 3),
                "note": calibration.get("note", ""),
            }
        )
    return pd.DataFrame(rows)


def labels_figure(fit: LearningCurveFit, *, label: str, target: float, n: float | None) -> go.Figure:
    """The measured few-shot means, the fitted power law, its bootstrap band and the target (log x)."""
    n_max = fit.n_max * EXTRAPOLATION_LIMIT
    grid = np.geomspace(min(fit.shots), max(n_max, (n or 0) * 1.2), 120)
    low, high = fit.band(grid)
    figure = go.Figure()
    figure.add_scatter(
        x=np.concatenate([grid, grid[::-1]]),
        y=np.concatenate([high, low[::-1]]),
        fill="toself",
        fillcolor="#636EFA",
        opacity=0.18,
        line=dict(width=0),
        name="95 % bootstrap band (over the draws)",
        hoverinfo="skip",
    )
    figure.add_scatter(
        x=grid,
        y=fit.curve(grid),
        mode="lines",
        line=dict(color="#636EFA"),
        name=f"fit: {fit.a:.1f} - {fit.b:.1f} n^-{fit.c:.2f}",
        hovertemplate="%{x:.3g} images per class: %{y:.1f} % (fit)<extra></extra>",
    )
    figure.add_scatter(
        x=list(fit.shots),
        y=list(fit.means),
        mode="markers",
        marker=dict(size=9, color="black"),
        name="measured (mean of the draws)",  # the curve's name is above the chart, in the answer and the picker
        customdata=list(fit.draws),
        hovertemplate=(
            f"{html_text(label)}<br>%{{x:g}} images per class: %{{y:.1f}} % (mean of %{{customdata}} draws)"
            "<extra></extra>"
        ),
    )
    # Lines as traces, not add_hline/add_vline: their annotations land at 10^x on a log axis.
    figure.add_scatter(
        x=[grid[0], grid[-1]],
        y=[target, target],
        mode="lines",
        line=dict(color="#EF553B", dash="dash"),
        name=f"target {target:g} %",
        hoverinfo="skip",
    )
    figure.add_scatter(
        x=[fit.n_max, fit.n_max],
        y=[0, 100],
        mode="lines",
        line=dict(color="grey", dash="dot"),
        name=f"largest measured level ({fit.n_max:g} per class)",
        hoverinfo="skip",
    )
    if n is not None:
        figure.add_scatter(
            x=[n],
            y=[target],
            mode="markers",
            marker=dict(size=14, symbol="x", color="#EF553B"),
            name=f"about {max(1, int(np.ceil(n)))} per class",
            hoverinfo="skip",
        )
    figure.update_layout(
        height=420,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=-0.22, yanchor="top"),
        xaxis=dict(type="log", title="labelled training images per class (log)"),
        yaxis=dict(title="test top-1 %", range=[0, 100]),
    )
    return figure


@st.cache_data(show_spinner=False, max_entries=32)
def _fit(shots: tuple[float, ...], accuracies: tuple[tuple[float, ...], ...]) -> LearningCurveFit:
    return fit_learning_curve(list(shots), [list(a) for a in accuracies])


def curve_label(key: tuple) -> str:
    backbone, weights, features, protocol = key
    return f"{backbone} · {weights_name(weights)} · {features} · {protocol_name(protocol)}"


# ----------------------------------------------------------------------------------------------- views


def show_accuracy_cost(runs: list[dict]) -> None:
    """The accuracy-cost view of the chosen runs."""
    st.subheader("Accuracy vs cost")
    axis = st.segmented_control(
        "Cost on the x axis", list(COST_AXES), default="ms / image", key=COST_AXIS_KEY, required=True
    )
    measured = costs()
    points, missing = cost_points(runs, measured, axis=axis or "ms / image")
    if points:
        st.plotly_chart(accuracy_cost_figure(points, axis=axis or "ms / image"), config={"displayModeBar": False})
        devices = sorted({p["cost"]["device"] for p in points})
        loads = [p["cost"]["load_before"][0] for p in points]
        busy = [p for p in points if p["cost"].get("busy")]
        st.caption(
            markdown_text(
                f"Each point is a run: test top-1 with its 95 % bootstrap interval against what its backbone costs "
                f"on {', '.join(devices)} at the run's precision ({COST_AXES[axis or 'ms / image'][2]}; "
                f"python -m core cost measures it once per backbone, weights, precision and device). Ringed runs are "
                f"the Pareto front (a dotted line joins them): no other run is both cheaper and more accurate. "
                f"Load average when measured: "
                f"{min(loads):.1f}-{max(loads):.1f}"
                + (
                    f"; {len(busy)} of {len(points)} measured while other work ran, so slower than on an idle machine."
                    if busy
                    else "."
                )
            )
        )
    if missing:
        specs = sorted({(r["backbone"], r["weights"], r["precision"]) for r in missing})
        names = ", ".join(f"{b} ({weights_name(w)}, {p})" for b, w, p in specs)
        st.caption(markdown_text(f"Cost not measured yet for {names}."))
        if st.button(f"Measure the cost of {len(specs)} backbone(s)", icon=":material/speed:", key="measure_cost"):
            with user_errors():
                job_runner().submit(
                    MEASURE_TITLE.format(n=len(specs)),
                    progress_job(measure_costs, specs=[list(s) for s in specs], workspace=workspace()),
                    kind="cost",
                )
                st.toast("Measuring in the background (under 30 s a backbone); the view updates when it is done.")


def show_calibration(runs: list[dict]) -> None:
    """ECE, NLL and Brier of the chosen runs before and after temperature scaling, and their reliability diagrams."""
    st.subheader("Calibration")
    frame = calibration_frame(runs)
    if frame.empty:
        st.caption("None of these runs recorded its calibration (runs made before calibration was measured).")
        return
    st.caption(
        "On each run's test part: expected calibration error (15 equal-width confidence bins, L1, as torchmetrics "
        "computes it), negative log-likelihood and Brier score, as trained and after temperature scaling (one "
        "temperature fitted on the validation part by minimising NLL; accuracy unchanged). Classify and predict use "
        "the scaled probabilities. "
        + markdown_text(f"k-NN: {SCORE_KINDS['knn']}, shown as they are and not calibrated.")
    )
    st.dataframe(frame, hide_index=True)
    with_records = [r for r in runs if (r.get("metrics") or {}).get("calibration")]
    columns = st.columns(2)
    for index, run in enumerate(with_records):
        calibration = run["metrics"]["calibration"]
        with columns[index % 2]:
            st.plotly_chart(
                reliability_figure(
                    calibration, title=f"#{run['id']} {run['backbone']} · {protocol_name(run['protocol'])}"
                ),
                config={"displayModeBar": False},
                key=f"reliability-{run['id']}",
            )


def show_labels_needed(few_shot: list[dict]) -> None:
    """Labels needed for a target accuracy, from a fitted few-shot curve (under the few-shot curves).

    ``few_shot``: the dataset's few-shot runs and its runs on the whole training part (``curve_points`` keeps a
    suite's "all" run as the curve's last level).
    """
    st.subheader("Labels needed")
    grouped = {key: levels for key, levels in curve_points(few_shot).items() if len(levels) >= MIN_LEVELS}
    if not grouped:
        st.caption(
            f"A few-shot curve with at least {MIN_LEVELS} shots levels is needed (a probe suite with e.g. shots "
            f"1,2,4,8,16 on the Train page)."
        )
        return
    # The most accurate curve first: the one a user is most likely choosing between.
    keys = sorted(grouped, key=lambda k: -max(np.mean(v) for v in grouped[k].values()))
    left, right = st.columns([3, 1])
    key = left.selectbox("Curve", keys, format_func=curve_label, key=CURVE_KEY)
    target = right.number_input(
        "Target test top-1 %", min_value=0.0, max_value=100.0, value=DEFAULT_TARGET, step=1.0, key=TARGET_KEY
    )
    levels = grouped[key]
    shots = tuple(sorted(levels))
    with user_errors():
        fit = _fit(shots, tuple(tuple(levels[s]) for s in shots))
        answer = labels_needed(fit, target=float(target))
        if answer.can_say:
            st.success(markdown_text(f"{curve_label(key)}: {answer.text}"), icon=":material/label:")
        else:
            st.warning(markdown_text(f"{curve_label(key)}: {answer.text}"), icon=":material/help:")
        st.plotly_chart(
            labels_figure(fit, label=curve_label(key), target=float(target), n=answer.n),
            config={"displayModeBar": False},
        )
        st.caption(
            markdown_text(
                f"Fitted accuracy(n) = a - b n^-c by bounded least squares (scipy) on the mean test top-1 of each "
                f"shots level ({', '.join(f'{s:g}' for s in shots)} images per class, {sum(fit.draws)} runs); "
                f"the band is the "
                f"2.5-97.5 percentiles of 200 refits with each level's draws resampled. a = {fit.a:.1f} % is the "
                f"ceiling the fit approaches; answers more than {EXTRAPOLATION_LIMIT:g}x beyond the largest measured "
                f"level are refused."
            )
        )
