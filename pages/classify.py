"""Classify page: drop in photos (or pick test images) and see what a trained run says, and why.

For each image: the photo, the run's top-5 classes, the nearest training images in the backbone's
feature space, and where the image lands on the run's t-SNE map; optionally a second run side by
side; a table and CSV for a batch. Predictions come from ``core.predict.Predictor.predict``, the
same call as ``python -m core predict``. Uploads stay in memory and are never written to disk.
Every user-controlled string (file, class and dataset names) is escaped before Markdown or Plotly
sees it.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from core.backbones import build_backbone
from core.images import SUPPORTED_UPLOAD_TYPES
from core.predict import Prediction, Predictor, default_run, rows_to_csv, summary_rows
from core.projection import embed_new_points, tsne_embedding
from core.workspace import Workspace
from ui.auth import require_access
from ui.common import dataset_label, list_runs, md, run_label, thumbnail, user_errors, workspace

require_access()  # first: no Streamlit mode runs this page past the access gate

DETAIL_LIMIT = 4  # images shown in full at once; with more, a picker chooses which one to show
THUMB_PX = 128  # neighbour thumbnails: big enough to recognise a flower, six fit a column
MAP_MIN_POINTS = 4  # t-SNE needs perplexity < points; below this a map says nothing anyway
_MEMO_KEY = "classify_predictions"


# ----------------------------------------------------------------------------------------------- caches


@st.cache_resource(show_spinner="Loading the backbone…", max_entries=4)
def _backbone(_workspace: Workspace, workspace_key: str, backbone: str, weights: str, weights_tag: str, precision: str) -> torch.nn.Module:
    # One per server process for every run on this backbone and weights, and every user. The precision
    # is in the key because a predictor casts its backbone's weights to its run's precision in place.
    model, _ = build_backbone(backbone, weights=weights, workspace=_workspace)
    return model


@st.cache_resource(show_spinner="Loading the run's head and training features…", max_entries=4)
def _predictor(_workspace: Workspace, workspace_key: str, run_id: int, weights_tag: str) -> Predictor:
    # One per (workspace, run, weights) per server process; the backbone itself comes from _backbone.
    return Predictor.from_run(run_id, workspace=_workspace, backbone_loader=lambda run: _backbone(
        _workspace, workspace_key, run["backbone"], run["weights"], run["weights_tag"], run["precision"]
    ))


@st.cache_data(show_spinner="Computing the run's t-SNE map…", max_entries=8)
def _run_map(workspace_key: str, run_id: int, weights_tag: str, _features: np.ndarray) -> np.ndarray:
    perplexity = min(30.0, (len(_features) - 1) / 3)  # t-SNE's default, shrunk for tiny training sets
    return tsne_embedding(_features, perplexity=perplexity, seed=0)


def _choice_label(run: dict) -> str:
    """Run label for pickers: backbone, weights, split, dataset and test accuracy (plain text)."""
    return f"{run_label(run)} · {dataset_label(run['dataset_name'], run['synthetic'])} · test acc {run['test_acc']:.1f} %"


def _workspace_key(ws: Workspace) -> str:
    return f"{ws.root}|{ws.data_root}"


def _classify(predictor: Predictor, items: list[tuple[str, str, object]]) -> list[Prediction]:
    """Predictions for ``items`` (key, name, source), remembered in this session so reruns are instant."""
    memo = st.session_state.setdefault(_MEMO_KEY, {})
    run_id = predictor.run["id"]
    todo = [(key, name, source) for key, name, source in items if (run_id, key) not in memo]
    if todo:
        with st.spinner(f"Classifying {len(todo)} image(s) with run #{run_id}…"):
            for (key, _, _), prediction in zip(todo, predictor.predict([(name, source) for _, name, source in todo])):
                memo[(run_id, key)] = prediction
    return [memo[(run_id, key)] for key, _, _ in items]


# ----------------------------------------------------------------------------------------------- charts


def _top_chart(prediction: Prediction) -> go.Figure:
    classes = [html.escape(name) for name, _ in reversed(prediction.top)]  # Plotly reads HTML tags in text
    probabilities = [p for _, p in reversed(prediction.top)]
    figure = go.Figure(go.Bar(
        x=probabilities, y=classes, orientation="h", marker_color="#7b3fa0",
        text=[f"{p:.1%}" for p in probabilities], textposition="auto", hovertemplate="%{y}: %{x:.2%}<extra></extra>",
    ))
    figure.update_layout(
        height=40 + 32 * len(classes), margin=dict(l=0, r=0, t=0, b=0), xaxis=dict(range=[0, 1], tickformat=".0%"),
        yaxis=dict(type="category"),
    )
    return figure


def _map_figure(predictor: Predictor, embedding: np.ndarray, placed: np.ndarray, names: list[str]) -> go.Figure:
    labels = predictor.reference_labels()
    paths = predictor.reference_paths()
    figure = go.Figure()
    for label, class_name in enumerate(predictor.class_names):
        members = np.flatnonzero(labels == label)
        if len(members) == 0:
            continue
        figure.add_trace(go.Scattergl(
            x=embedding[members, 0], y=embedding[members, 1], mode="markers", name=html.escape(class_name),
            marker=dict(size=6, opacity=0.75), hoverinfo="text",
            hovertext=[html.escape(f"{class_name} · {paths[m].name}") for m in members],
        ))
    figure.add_trace(go.Scatter(
        x=placed[:, 0], y=placed[:, 1], mode="markers+text", name="your images",
        marker=dict(symbol="star", size=18, color="#111111", line=dict(color="#ffffff", width=1)),
        text=[str(i + 1) for i in range(len(names))], textposition="top center", hoverinfo="text",
        hovertext=[html.escape(name) for name in names],
    ))
    figure.update_layout(
        height=480, margin=dict(l=0, r=0, t=10, b=0), xaxis=dict(visible=False), yaxis=dict(visible=False),
        legend=dict(itemsizing="constant"),
    )
    return figure


# ----------------------------------------------------------------------------------------------- sections


def _run_column(predictor: Predictor, prediction: Prediction, key: str) -> None:
    st.caption(md(_choice_label(predictor.run)))
    st.plotly_chart(_top_chart(prediction), key=key, config={"displayModeBar": False})
    st.markdown("**Nearest training images** (cosine distance)")
    st.image(
        [thumbnail(n.path, size=THUMB_PX)[0] for n in prediction.neighbours],
        caption=[md(f"{n.class_name} · {n.distance:.3f}") for n in prediction.neighbours], width=THUMB_PX,
    )


def _details(index: int, name: str, per_run: list[tuple[Predictor, Prediction]]) -> None:
    st.markdown(f"#### {index + 1}\\. {md(name)}")
    photo, *columns = st.columns([2] + [3] * len(per_run))
    photo.image(per_run[0][1].preview)
    for column, (predictor, prediction) in zip(columns, per_run):
        with column:
            _run_column(predictor, prediction, key=f"top-{predictor.run['id']}-{index}")


def _batch_table(names: list[str], per_run: list[tuple[Predictor, list[Prediction]]]) -> None:
    if len(per_run) == 1:
        rows = summary_rows(per_run[0][1])
    else:
        rows = [{"file": name} for name in names]
        for predictor, predictions in per_run:
            for row, summary in zip(rows, summary_rows(predictions)):
                row.update({f"{column} (run {predictor.run['id']})": value for column, value in summary.items() if column != "file"})
    st.dataframe(
        pd.DataFrame(rows), hide_index=True,
        column_config={column: st.column_config.NumberColumn(format="percent") for column in rows[0] if column.startswith("confidence")},
    )
    st.download_button("Download CSV", rows_to_csv(rows), file_name="predictions.csv", mime="text/csv", on_click="ignore")


def _map(predictor: Predictor, predictions: list[Prediction], ws: Workspace) -> None:
    placed = [p for p in predictions if p.ok]
    if not placed or len(predictor.reference_features) < MAP_MIN_POINTS:
        return
    run = predictor.run
    embedding = _run_map(_workspace_key(ws), run["id"], run["weights_tag"], predictor.reference_features)
    positions = embed_new_points(predictor.reference_features, embedding, np.stack([p.features for p in placed]))
    st.caption(md(f"Run #{run['id']}: training images on a t-SNE map of {run['backbone']} features; ★ = your images"))
    st.plotly_chart(_map_figure(predictor, embedding, positions, [p.name for p in placed]), key=f"map-{run['id']}")


def _choose_runs(runs: list[dict]) -> list[dict]:
    by_id = {run["id"]: run for run in runs}
    ids = list(by_id)
    first = st.selectbox(
        "Run", ids, index=ids.index(default_run(runs)["id"]), format_func=lambda i: _choice_label(by_id[i]),
        help="Default: the best run on the most recently trained dataset.",
    )
    chosen = [by_id[first]]
    others = [i for i in ids if i != first]
    if others and st.toggle("Compare with a second run", help="e.g. DINOv2 against ResNet-50 on the same photos"):
        # Default: the best other run with a different backbone, so the comparison says something.
        different = [i for i in others if by_id[i]["backbone"] != by_id[first]["backbone"]] or others
        suggested = max(different, key=lambda i: (by_id[i]["test_acc"] or 0.0, i))
        second = st.selectbox("Second run", others, index=others.index(suggested), format_func=lambda i: _choice_label(by_id[i]))
        chosen.append(by_id[second])
    return chosen


def _inputs(predictor: Predictor) -> list[tuple[str, str, object]]:
    """(key, name, source) of each image to classify: uploads first, then chosen test images."""
    uploads = st.file_uploader(
        "Photos to classify", type=SUPPORTED_UPLOAD_TYPES, accept_multiple_files=True,
        help="JPEG, PNG, WebP, HEIC, … Kept in memory for this session only; never saved to disk.",
    )
    dataset = predictor.dataset
    test_rows = [int(r) for r in dataset.split(predictor.run["split"])["test"]]
    samples = st.multiselect(
        "…or test images of the run's dataset", test_rows,
        format_func=lambda r: f"{dataset.class_names[dataset.labels[r]]} · {dataset.image_paths[r].name}",
        placeholder="Choose test images",
    )
    items = [(f"upload:{u.file_id}", u.name, u.getvalue()) for u in uploads or []]
    items += [(f"sample:{dataset.image_paths[row]}", dataset.image_paths[row].name, dataset.image_paths[row]) for row in samples]
    return items


def _main() -> None:
    runs = [run for run in list_runs(status="completed") if run["test_acc"] is not None]
    if not runs:
        st.info("No trained run yet. Train a head on a backbone's features first (Train page, or "
                "`python -m core compare`); then come back and classify your photos.", icon=":material/info:")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        return
    ws = workspace()
    chosen = _choose_runs(runs)
    predictors = [_predictor(ws, _workspace_key(ws), run["id"], run["weights_tag"]) for run in chosen]
    items = _inputs(predictors[0])
    if not items:
        st.caption("Upload photos or choose test images to see predictions.")
        return

    per_run = [(predictor, _classify(predictor, items)) for predictor in predictors]
    wanted = {(p.run["id"], key) for p in predictors for key, _, _ in items}
    st.session_state[_MEMO_KEY] = {k: v for k, v in st.session_state[_MEMO_KEY].items() if k in wanted}

    first = per_run[0][1]
    names = [p.name for p in first]
    for prediction in first:
        if not prediction.ok:
            st.warning(md(prediction.error), icon=":material/broken_image:")
    good = [i for i, p in enumerate(first) if p.ok]
    if len(items) > 1:
        _batch_table(names, per_run)
    if not good:
        return
    shown = good if len(good) <= DETAIL_LIMIT else [st.selectbox(
        "Show details for", good, format_func=lambda i: f"{i + 1}. {names[i]}",
    )]
    for index in shown:
        _details(index, names[index], [(predictor, predictions[index]) for predictor, predictions in per_run])

    st.subheader("Where your images land")
    for column, (predictor, predictions) in zip(st.columns(len(per_run)), per_run):
        with column:
            _map(predictor, predictions, ws)


st.title("Classify")
st.caption("Drop in photos and see what a trained run says: top-5 classes, the training images nearest "
           "in its feature space, and where each photo lands on the run's map.")
with user_errors():
    _main()
