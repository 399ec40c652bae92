"""Plotly figures for the dashboard: training curves, confusion matrices, per-class accuracy, class counts.

Pure functions of data (no Streamlit calls), so tests can build and inspect them. Every user-controlled
string (class names, dataset names) goes through ``core.base.text.html_text`` first: Plotly renders a subset of HTML in
text, so a class folder called ``<b>x</b>`` would otherwise show in bold, and ``&lt;`` is how Plotly
shows a literal ``<``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.base.text import html_text
from core.maps.projection import class_colours  # one palette for every map: Explorer, Classify, the CLI's figures

# Plotly's default qualitative palette; runs keep one colour across every figure of a page.
RUN_COLOURS = (
    "#636EFA",
    "#EF553B",
    "#00CC96",
    "#AB63FA",
    "#FFA15A",
    "#19D3F3",
    "#FF6692",
    "#B6E880",
    "#FF97FF",
    "#FECB52",
)
# Training curves: a tick per epoch and a marker per point while the runs are this short.
_TICKED_EPOCHS, _MARKED_EPOCHS = 20, 60
# Pixels per class row/column: 17 classes stay readable without scrolling.
_CELL_PX = 20
# Longer class names are cut on axes (hover shows them whole), so the plots keep their room.
_TICK_CHARS = 24


def run_colour(index: int) -> str:
    return RUN_COLOURS[index % len(RUN_COLOURS)]


# Few-shot lines: one line style (and marker) per protocol, so a protocol reads the same across backbones and two
# lines on the same values still show both (the marker of one, the dash of the other).
PROTOCOL_DASHES = {"mlp": "solid", "linear": "dot", "logreg": "dash", "knn": "dashdot", "ncm": "longdash"}
PROTOCOL_SYMBOLS = {"mlp": "circle", "linear": "square", "logreg": "diamond", "knn": "triangle-up", "ncm": "x"}


def add_chance_line(figure: go.Figure, n_classes: int | None, *, vertical: bool = False, **subplot) -> None:
    """A grey dotted line at chance accuracy (100 / ``n_classes`` %), labelled, on an accuracy axis (x when
    ``vertical``); nothing for fewer than two classes. ``subplot``: ``row``/``col`` of a subplot figure."""
    if not n_classes or n_classes < 2:
        return
    chance = 100.0 / n_classes
    line = dict(color="#888888", dash="dot", width=1)
    text = f"chance ({chance:.1f} %)"
    if vertical:
        figure.add_vline(x=chance, line=line, annotation_text=text, annotation_position="top", **subplot)
    else:
        figure.add_hline(y=chance, line=line, annotation_text=text, annotation_position="bottom right", **subplot)


def short(text: str, limit: int = _TICK_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _class_axis(class_names: Sequence[str]) -> dict:
    """Integer positions labelled with the (shortened, escaped) class names: odd names cannot merge categories."""
    return {
        "tickmode": "array",
        "tickvals": list(range(len(class_names))),
        "ticktext": [html_text(short(c)) for c in class_names],
    }


def _label_px(class_names: Sequence[str]) -> int:
    """Room a 45-degree tick label needs below the plot, from the longest (shortened) name."""
    return int(7 * max((len(short(c)) for c in class_names), default=0))


def curves_figure(curves: Mapping[str, Sequence[Mapping]], *, n_classes: int | None = None) -> go.Figure:
    """Loss and accuracy per epoch, train solid and valid dashed, one colour per run; chance drawn when ``n_classes``.

    Parameters
    ----------
    curves : mapping of run label to sequence of epoch dicts
        Each dict has ``epoch``, ``train_loss``, ``train_acc``, ``valid_loss``, ``valid_acc`` (accuracies in percent).
    n_classes : int, optional
        Classes of the runs' dataset: a line at chance accuracy on the accuracy panel.
    """
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("Loss (cross-entropy)", "Accuracy (%)"), horizontal_spacing=0.08
    )
    longest = max((len(list(epochs)) for epochs in curves.values()), default=0)
    for index, (label, epochs) in enumerate(curves.items()):
        epochs = list(epochs)
        x = [e["epoch"] for e in epochs]
        colour = run_colour(index)
        for column, metric in ((1, "loss"), (2, "acc")):
            for part, dash in (("train", "solid"), ("valid", "dash")):
                figure.add_scatter(
                    x=x,
                    y=[e[f"{part}_{metric}"] for e in epochs],
                    mode="lines+markers" if longest <= _MARKED_EPOCHS else "lines",
                    name=f"{html_text(label)} · {part}",
                    legendgroup=label,
                    showlegend=column == 1,
                    line=dict(color=colour, dash=dash),
                    row=1,
                    col=column,
                    hovertemplate=f"{html_text(label)}<br>{part} {metric}: %{{y:.4g}}<br>epoch %{{x}}<extra></extra>",
                )
    # A tick per epoch reads well up to _TICKED_EPOCHS; past that (a 400-epoch run) the ticks overlap, so Plotly
    # spaces them, whole numbers only.
    figure.update_xaxes(title_text="epoch", tickformat="d", dtick=1 if longest <= _TICKED_EPOCHS else None)
    add_chance_line(figure, n_classes, row=1, col=2)
    figure.update_layout(height=380, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return figure


def confusion_figure(*, confusion: np.ndarray, class_names: Sequence[str], title: str = "") -> go.Figure:
    """Confusion matrix: rows true class, columns predicted class, coloured by the share of each true class.

    Parameters
    ----------
    confusion : ndarray of shape (n_classes, n_classes), counts
    class_names : sequence of str, length n_classes

    A transparent scatter point sits on every cell, because Plotly reports clicks on scatter points
    but not on heatmap cells; its ``customdata`` is ``[true index, predicted index]``.
    """
    confusion = np.asarray(confusion)
    n = len(class_names)
    totals = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, totals, out=np.zeros(confusion.shape, dtype=float), where=totals > 0)
    names = [html_text(c) for c in class_names]
    true_index, predicted_index = np.indices((n, n))
    figure = go.Figure()
    figure.add_heatmap(
        # Zeros left blank: the few non-zero cells are what the eye should find.
        z=share,
        x=list(range(n)),
        y=list(range(n)),
        text=np.where(confusion > 0, confusion.astype(str), " "),
        texttemplate="%{text}",
        colorscale="Blues",
        zmin=0,
        zmax=1,
        showscale=False,
        hoverinfo="skip",
        xgap=1,
        ygap=1,
    )
    figure.add_scatter(
        x=predicted_index.ravel(),
        y=true_index.ravel(),
        mode="markers",
        showlegend=False,
        marker=dict(size=_CELL_PX - 4, symbol="square", color="rgba(0,0,0,0)"),
        selected=dict(marker=dict(color="rgba(255,160,0,0.45)")),
        unselected=dict(marker=dict(opacity=1)),
        customdata=np.stack([true_index.ravel(), predicted_index.ravel()], axis=1),
        hovertext=[
            f"true: {names[t]}<br>predicted: {names[p]}<br>{confusion[t, p]} image(s)"
            for t, p in zip(true_index.ravel(), predicted_index.ravel())
        ],
        hovertemplate="%{hovertext}<br>click to see them<extra></extra>",
    )
    side = 100 + _CELL_PX * n + _label_px(class_names)
    figure.update_layout(
        title=dict(text=html_text(title), font=dict(size=14)),
        height=side,
        margin=dict(l=10, r=10, t=40, b=10),
        xaxis=_class_axis(class_names) | {"title": "predicted", "tickangle": -45, "showgrid": False, "zeroline": False},
        yaxis=_class_axis(class_names)
        | {"title": "true", "autorange": "reversed", "showgrid": False, "zeroline": False},
        clickmode="event+select",
        dragmode=False,
        plot_bgcolor="rgba(0,0,0,0)",
    )
    return figure


def per_class_figure(*, class_names: Sequence[str], accuracies: Mapping[str, Sequence[float | None]]) -> go.Figure:
    """Horizontal bars of test accuracy per class, one colour per run.

    Parameters
    ----------
    class_names : sequence of str, length n_classes
    accuracies : mapping of run label to sequence of float or None (percent; None: no test image of that class)
    """
    figure = go.Figure()
    positions = list(range(len(class_names)))
    names = [html_text(c) for c in class_names]
    for index, (label, values) in enumerate(accuracies.items()):
        figure.add_bar(
            y=positions,
            x=[np.nan if v is None else v for v in values],
            orientation="h",
            name=html_text(label),
            marker_color=run_colour(index),
            customdata=names,
            hovertemplate=f"{html_text(label)}<br>%{{customdata}}: %{{x:.1f}} %<extra></extra>",
        )
    figure.update_layout(
        barmode="group",
        height=120 + len(class_names) * max(18, 9 * len(accuracies)),
        margin=dict(l=10, r=10, t=30, b=10),
        yaxis=_class_axis(class_names) | {"autorange": "reversed"},
        xaxis=dict(title="test accuracy (%)", range=[0, 100]),
        legend=dict(orientation="h", y=1.02, yanchor="bottom"),
    )
    add_chance_line(figure, len(class_names), vertical=True)
    return figure


def top_classes_figure(top: Sequence[tuple[str, float]]) -> go.Figure:
    """Horizontal bars of a prediction's top classes, most probable on top.

    Parameters
    ----------
    top : sequence of (class name, probability), most probable first
    """
    classes = [html_text(name) for name, _ in reversed(top)]
    probabilities = [p for _, p in reversed(top)]
    figure = go.Figure(
        go.Bar(
            x=probabilities,
            y=classes,
            orientation="h",
            marker_color="#7b3fa0",
            text=[f"{p:.1%}" for p in probabilities],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    figure.update_layout(
        height=40 + 32 * len(classes),
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        xaxis={"range": [0, 1], "tickformat": ".0%"},
        yaxis={"type": "category"},
    )
    return figure


def placed_map_figure(
    *,
    embedding: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    file_names: Sequence[str],
    placed: np.ndarray,
    placed_names: Sequence[str],
    title: str,
    placed_numbers: Sequence[int] | None = None,
    unfamiliar: Sequence[bool] | None = None,
) -> go.Figure:
    """A run's map of its training images, class colours as on the Explorer, with new images as numbered stars.

    Parameters
    ----------
    embedding : ndarray of shape (n_train, 2)
    labels : ndarray of shape (n_train,), class index of each training image
    file_names : sequence of str, length n_train
    placed : ndarray of shape (n_new, 2), where the new images land
    placed_names : sequence of str, length n_new
    placed_numbers : sequence of int, length n_new, optional
        The number each new image has in the page's list (default 1..n_new), written on its star.
    unfamiliar : sequence of bool, length n_new, optional
        Images that look like no training image: drawn apart, in a column right of the map, as open grey stars.
    """
    colours = class_colours(len(class_names))
    figure = go.Figure()
    for label, class_name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        if len(members) == 0:
            continue
        figure.add_trace(
            go.Scattergl(
                x=embedding[members, 0],
                y=embedding[members, 1],
                mode="markers",
                name=html_text(class_name),
                marker={"size": 6, "opacity": 0.75, "color": colours[label]},
                hoverinfo="text",
                hovertext=[html_text(f"{class_name} · {file_names[m]}") for m in members],
            )
        )
    numbers = list(placed_numbers) if placed_numbers is not None else list(range(1, len(placed_names) + 1))
    odd = np.asarray(unfamiliar if unfamiliar is not None else [False] * len(placed_names), dtype=bool)
    placed = np.asarray(placed, dtype=float).copy()
    if odd.any():
        # Apart from every cluster: a column right of the map, one above the other, so no reader takes the place a
        # weighted mean of neighbours gives it (inside some cluster) for a resemblance.
        low, high = embedding.min(axis=0), embedding.max(axis=0)
        span = np.maximum(high - low, 1e-9)
        placed[odd, 0] = high[0] + 0.15 * span[0]
        placed[odd, 1] = np.linspace(high[1], low[1], int(odd.sum()) + 2)[1:-1]
    for mask, name, marker in (
        (~odd, "your images", {"symbol": "star", "size": 18, "color": "#111111"}),
        (
            odd,
            "your images that look like no training image (placed apart)",
            {"symbol": "star-open", "size": 18, "color": "#888888"},
        ),
    ):
        if not mask.any():
            continue
        figure.add_trace(
            go.Scatter(
                x=placed[mask, 0],
                y=placed[mask, 1],
                mode="markers+text",
                name=name,
                marker={
                    **marker,
                    "line": {"color": "#ffffff" if marker["color"] == "#111111" else "#888888", "width": 1},
                },
                text=[str(n) for n, m in zip(numbers, mask) if m],
                textposition="top center",
                hoverinfo="text",
                hovertext=[html_text(n) for n, m in zip(placed_names, mask) if m],
            )
        )
    figure.update_layout(
        # The title sits left and the mode bar right, above the plot, so the toolbar never covers it.
        title={"text": html_text(title), "font": {"size": 14}, "x": 0, "xanchor": "left", "y": 0.98, "yanchor": "top"},
        height=480,
        margin={"l": 0, "r": 0, "t": 60, "b": 0},
        xaxis={"visible": False},
        yaxis={"visible": False},
        legend={"itemsizing": "constant"},
        modebar={"orientation": "v"},
    )
    return figure


def fewshot_figure(points: Sequence[Mapping], *, n_classes: int | None = None) -> go.Figure:
    """Test accuracy against labelled images per class (log x), one line per label, a band of +- one std over draws.

    Colour by backbone and weights (``colour_key``), line style and marker by ``protocol`` (``PROTOCOL_DASHES``), so
    pretrained and random weights of one backbone never share a colour by accident, and a line on top of another
    still shows; chance accuracy drawn when ``n_classes``.

    Parameters
    ----------
    points : sequence of mappings with ``label``, ``x`` (images per class), ``mean`` and ``std`` (percent; std None
        for a single run, e.g. the whole training part); optionally ``colour_key`` and ``protocol``
    n_classes : int, optional
    """
    figure = go.Figure()
    by_label: dict[str, list[Mapping]] = {}
    for point in points:
        by_label.setdefault(point["label"], []).append(point)
    colour_keys: list = []
    for label, members in by_label.items():
        key = members[0].get("colour_key", label)
        if key not in colour_keys:
            colour_keys.append(key)
    for label, members in by_label.items():
        members = sorted(members, key=lambda p: p["x"])
        x, mean = [p["x"] for p in members], [p["mean"] for p in members]
        std = [p["std"] or 0.0 for p in members]
        colour, name = run_colour(colour_keys.index(members[0].get("colour_key", label))), html_text(label)
        protocol = members[0].get("protocol")
        figure.add_scatter(  # the band first, so the line draws over it: mean + std forward, mean - std back
            x=x + x[::-1],
            y=[m + s for m, s in zip(mean, std)] + [m - s for m, s in zip(mean[::-1], std[::-1])],
            fill="toself",
            fillcolor=colour,
            opacity=0.15,
            line=dict(width=0),
            hoverinfo="skip",
            showlegend=False,
            legendgroup=label,
        )
        figure.add_scatter(
            x=x,
            y=mean,
            mode="lines+markers",
            name=name,
            legendgroup=label,
            line=dict(color=colour, dash=PROTOCOL_DASHES.get(protocol, "solid")),
            marker=dict(symbol=PROTOCOL_SYMBOLS.get(protocol, "circle"), size=8),
            customdata=[[s, p["draws"]] for s, p in zip(std, members)],
            hovertemplate=(
                f"{name}<br>%{{x:.3g}} images per class: %{{y:.1f}} % ± %{{customdata[0]:.1f}} "
                "(%{customdata[1]} draws)<extra></extra>"
            ),
        )
    ticks = sorted({round(p["x"], 1) for p in points})  # the levels measured, not Plotly's 2-3-5 minor labels
    figure.update_layout(
        height=460,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(orientation="h", y=-0.25, yanchor="top"),
        xaxis=dict(
            type="log",
            title="labelled training images per class (log)",
            tickvals=ticks,
            ticktext=[f"{t:g}" for t in ticks],
        ),
        yaxis=dict(title="test accuracy (%)", range=[0, 100]),
    )
    add_chance_line(figure, n_classes)
    return figure
