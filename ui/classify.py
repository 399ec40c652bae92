"""The Classify page's logic: runs to classify with, the images, predictions, and how to show them.

``pages/classify.py`` reads top to bottom (title, ``choose_runs()``, ``load_predictors(...)``,
``choose_images(...)``, ``show_results(...)``). Predictions come from ``core.predict.classify.Predictor.predict``,
the same call as ``python -m core predict``; figures from ``ui.charts``. A run whose training features
were deleted is not re-extracted on the page's thread: the extraction is queued in the job runner and
the page says so. Uploads stay in memory and are never written to disk; every user-controlled string
goes through ``core.base.text`` before Markdown or Plotly sees it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
import torch

from core.backbones import registry as backbones
from core.backbones.variants import default_variant
from core.base.csv_export import csv_text
from core.base.text import markdown_text
from core.base.workspace import Workspace
from core.data.images import SUPPORTED_UPLOAD_TYPES
from core.features.extract import extract_features
from core.jobs.runner import progress_job
from core.maps.projection import MAP_METHODS, MIN_MAP_POINTS, FeatureMap, MapParams, cached_map, fit_map_params
from core.predict.classify import (
    DEFAULT_RUN_RULE,
    MEMORY_PROTOCOLS,
    FeaturesMissingError,
    Prediction,
    Predictor,
    default_run,
    summary_rows,
)
from core.probing.probes import TOKEN_PROTOCOLS
from core.runs.naming import run_name
from ui.charts import placed_map_figure, top_classes_figure
from ui.jobs import job_card, live_jobs
from ui.labels import dataset_label
from ui.state import job_runner, list_runs, show_run_warnings, workspace
from ui.widgets import photo_grid

DETAIL_LIMIT = 4  # images shown in full at once; with more, a picker chooses which one to show
THUMB_PX = 128  # neighbour thumbnails: big enough to recognise a flower, six fit a column
_MEMO_KEY = "classify_predictions"
_EXTRACTION_TITLE = "Training features of run #{run_id}"


# ----------------------------------------------------------------------------------------------- caches


@st.cache_resource(show_spinner="Loading the backbone…", max_entries=4)
def _backbone(
    _workspace: Workspace, workspace_key: str, backbone: str, weights: str, weights_tag: str
) -> torch.nn.Module:
    # One per server process for every run on this backbone and weights, and every user. Never changed:
    # a predictor of another precision converts a copy (core.features.extract.prepare_model).
    model, _ = backbones.build_backbone(backbone, weights=weights, workspace=_workspace)
    return model


@st.cache_resource(show_spinner="Loading the run's head and training features…", max_entries=4)
def _predictor(_workspace: Workspace, workspace_key: str, run_id: int, weights_tag: str) -> Predictor:
    # One per (workspace, run, weights) per server process; the backbone itself comes from _backbone.
    return Predictor.from_run(
        run_id,
        workspace=_workspace,
        backbone_loader=lambda run: _backbone(
            _workspace, workspace_key, run["backbone"], run["weights"], run["weights_tag"]
        ),
    )


@st.cache_resource(show_spinner="Computing the run's map…", max_entries=8)
def _run_map(workspace_key: str, run_id: int, weights_tag: str, method: str, _features: np.ndarray) -> FeatureMap:
    n_points = len(_features)
    # The methods' defaults, shrunk for tiny training sets (each needs neighbours to exist).
    params, _ = fit_map_params(method, MapParams(), n_points)
    return cached_map(_features, method=method, params=params, cache_dir=workspace().features_dir / "maps")


def _workspace_key(ws: Workspace) -> str:
    return f"{ws.root}|{ws.data_root}"


# ----------------------------------------------------------------------------------------------- pure helpers


def choice_label(run: dict) -> str:
    """Run name for pickers (``core.runs.naming.run_name``), then its dataset (plain text)."""
    return f"{run_name(run)} · {dataset_label(run['dataset_name'], run['synthetic'])}"


def classifiable(runs: list[dict]) -> list[dict]:
    """Completed runs that can classify on the backbone's default features: a trained head, or k-NN / NCM on the
    whole training part (they predict from the run's cached training features); and attentive runs, whose head
    reads the backbone's patch tokens from the same forward.

    ``Predictor`` computes an upload's features with the backbone's own forward, i.e. its default variant; a head
    trained on another variant (patch mean, last 4 CLS tokens) expects features this page does not compute.
    """
    return [
        run
        for run in runs
        if run["status"] == "completed"
        and run["test_acc"] is not None
        and (run.get("head_path") or (run.get("protocol") in MEMORY_PROTOCOLS and run.get("shots") is None))
        and (run.get("features") in (None, default_variant(run["backbone"])) or run.get("protocol") in TOKEN_PROTOCOLS)
    ]


def reference_note(predictor: Predictor) -> str | None:
    """For an attentive run: what its neighbours and map are measured in, which is not what its head reads."""
    if not predictor.reads_tokens:
        return None
    return (
        f"The attentive head reads the photo's patch tokens; the nearest training images and the map use "
        f"{predictor.run['backbone']}'s default pooled features ({predictor.backbone.default_variant}), which the "
        "head never sees, so they show what the backbone finds alike, not what the head looked at."
    )


def batch_rows(names: list[str], per_run: list[tuple[Predictor, list[Prediction]]]) -> list[dict]:
    """One row per image; with two runs, each run's columns suffixed by its id (for the table and the CSV)."""
    if len(per_run) == 1:
        predictor, predictions = per_run[0]
        # The CSV says what its confidences are: temperature-scaled (calibrated) or the head's plain softmax.
        return [{**row, "confidence is": _confidence_kind(predictor)} for row in summary_rows(predictions)]
    rows = [{"file": name} for name in names]
    for predictor, predictions in per_run:
        for row, summary in zip(rows, summary_rows(predictions)):
            row.update(
                {
                    f"{column} (run {predictor.run['id']})": value
                    for column, value in summary.items()
                    if column != "file"
                }
            )
            row[f"confidence is (run {predictor.run['id']})"] = _confidence_kind(predictor)
    return rows


def _confidence_kind(predictor: Predictor) -> str:
    if predictor.calibrated:
        return f"calibrated (temperature {predictor.temperature:.3g} fitted on validation)"
    if predictor.run.get("protocol") == "knn":
        return "k-NN vote share, not a probability"
    return "uncalibrated softmax"


def display_rows(rows: list[dict]) -> pd.DataFrame:
    """The batch table as shown: every cell text, empty where a value is missing (never "None")."""

    def cell(column: str, value: object) -> str:
        if value is None:
            return ""
        if column.startswith("confidence") and isinstance(value, (int, float)):  # not "confidence is" (text)
            return f"{value:.1%}"
        if column.startswith("nearest training distance"):
            return f"{value:.3f}"
        if column.startswith("unfamiliar"):
            return "yes" if value else "no"
        return str(value)

    return pd.DataFrame([{column: cell(column, value) for column, value in row.items()} for row in rows])


def unfamiliar_text(prediction: Prediction, predictor: Predictor) -> str:
    """The warning for a photo that looks like no training image (plain text)."""
    return (
        f"Looks like no training image: its nearest one is {prediction.neighbours[0].distance:.3f} away (cosine), "
        f"beyond {predictor.unfamiliar_distance:.3f}, the far-out fence (Q3 + 3 IQR) of the training images' "
        "distances to their nearest other training image. Treat the top classes with suspicion."
    )


# ----------------------------------------------------------------------------------------------- inputs


def choose_runs() -> list[dict] | None:
    """The run (and optionally a second one) to classify with; None after saying there is none."""
    runs = classifiable(list_runs(status="completed"))
    if not runs:
        st.info(
            "No trained run yet. Train a head on a backbone's features first (Train page, or "
            "`python -m core compare`); then come back and classify your photos.",
            icon=":material/info:",
        )
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        return None
    by_id = {run["id"]: run for run in runs}
    ids = list(by_id)
    first = st.selectbox(
        "Run",
        ids,
        index=ids.index(default_run(runs)["id"]),
        format_func=lambda i: choice_label(by_id[i]),
        help=f"Chosen at first: {DEFAULT_RUN_RULE}.",
    )
    st.caption(f"Chosen at first: {DEFAULT_RUN_RULE}.")
    show_run_warnings([by_id[first]])
    chosen = [by_id[first]]
    others = [i for i in ids if i != first]
    if others and st.toggle("Compare with a second run", help="e.g. DINOv2 against ResNet-50 on the same photos"):
        # Default: the best other run with a different backbone, so the comparison says something.
        different = [i for i in others if by_id[i]["backbone"] != by_id[first]["backbone"]] or others
        suggested = max(different, key=lambda i: (by_id[i]["test_acc"] or 0.0, i))
        second = st.selectbox(
            "Second run", others, index=others.index(suggested), format_func=lambda i: choice_label(by_id[i])
        )
        chosen.append(by_id[second])
    return chosen


def _queue_extraction(run: dict, missing: FeaturesMissingError) -> None:
    """Queue (once) the extraction of a run's missing training features, and show its job."""
    runner = job_runner()
    title = _EXTRACTION_TITLE.format(run_id=run["id"])
    job = next(
        (j for j in runner.find(kinds=("features",), key=str(run["id"])) if j.active or j.status == "failed"), None
    )
    if job is None:
        job = runner.submit(
            title, progress_job(extract_features, **missing.extraction), kind="features", key=str(run["id"])
        )
    st.info(
        markdown_text(
            f"{missing} Their extraction is queued as job {job.id} (progress below and in the sidebar); "
            "this page classifies with the run once it has finished."
        ),
        icon=":material/schedule:",
    )
    # Live while it runs (ui.jobs.live_jobs); the page reruns when it ends and classifies with the run.
    live_jobs(lambda: job_card(job_runner().get(job.id)), busy=lambda: job_runner().get(job.id).active)


def load_predictors(runs: list[dict]) -> list[Predictor] | None:
    """A predictor per run, or None while a missing extraction runs in the job queue (said on the page)."""
    ws = workspace()
    predictors = []
    for run in runs:
        try:
            predictors.append(_predictor(ws, _workspace_key(ws), run["id"], run["weights_tag"]))
        except FeaturesMissingError as missing:
            _queue_extraction(run, missing)
            return None
    return predictors


def choose_images(predictor: Predictor) -> list[tuple[str, str, object]]:
    """(key, name, source) of each image to classify: uploads first, then chosen test images."""
    uploads = st.file_uploader(
        "Photos to classify",
        type=SUPPORTED_UPLOAD_TYPES,
        accept_multiple_files=True,
        help="JPEG, PNG, WebP, HEIC, … Kept in memory for this session only; never saved to disk.",
    )
    dataset = predictor.dataset
    test_rows = [int(r) for r in dataset.split(predictor.run["split"])["test"]]
    samples = st.multiselect(
        "…or test images of the run's dataset",
        test_rows,
        format_func=lambda r: f"{dataset.class_names[dataset.labels[r]]} · {dataset.image_paths[r].name}",
        placeholder="Choose test images",
    )
    items = [(f"upload:{u.file_id}", u.name, u.getvalue()) for u in uploads or []]
    items += [
        (f"sample:{dataset.image_paths[row]}", dataset.image_paths[row].name, dataset.image_paths[row])
        for row in samples
    ]
    if not items:
        st.caption("Upload photos or choose test images to see predictions.")
    return items


# ----------------------------------------------------------------------------------------------- output


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


def _run_column(predictor: Predictor, prediction: Prediction, key: str) -> None:
    st.caption(markdown_text(choice_label(predictor.run)))
    st.caption(markdown_text(predictor.probabilities_note.capitalize() + "."))
    if prediction.unfamiliar:
        st.warning(markdown_text(unfamiliar_text(prediction, predictor)), icon=":material/help:")
    st.plotly_chart(top_classes_figure(prediction.top), key=key, config={"displayModeBar": False})
    st.markdown("**Nearest training images** (cosine distance)")
    if note := reference_note(predictor):
        st.caption(markdown_text(note))
    photo_grid(
        [n.path for n in prediction.neighbours],
        [f"{n.class_name} · {n.distance:.3f}" for n in prediction.neighbours],
        size=THUMB_PX,
    )


def _details(index: int, name: str, per_run: list[tuple[Predictor, Prediction]]) -> None:
    st.markdown(f"#### {index + 1}\\. {markdown_text(name)}")
    photo, *columns = st.columns([2] + [3] * len(per_run))
    photo.image(per_run[0][1].preview)
    for column, (predictor, prediction) in zip(columns, per_run):
        with column:
            _run_column(predictor, prediction, key=f"top-{predictor.run['id']}-{index}")


def _batch_table(names: list[str], per_run: list[tuple[Predictor, list[Prediction]]]) -> None:
    rows = batch_rows(names, per_run)
    st.dataframe(display_rows(rows), hide_index=True)
    st.download_button("Download CSV", csv_text(rows), file_name="predictions.csv", mime="text/csv", on_click="ignore")


def _map(predictor: Predictor, predictions: list[Prediction], method: str) -> None:
    # Numbers as in the list above (an unreadable file keeps its number, so the stars match the list).
    numbers = [i + 1 for i, p in enumerate(predictions) if p.ok]
    placed = [p for p in predictions if p.ok]
    if not placed or len(predictor.reference_features) < MIN_MAP_POINTS:
        return
    run = predictor.run
    feature_map = _run_map(
        _workspace_key(workspace()), run["id"], run["weights_tag"], method, predictor.reference_features
    )
    positions = feature_map.place(np.stack([p.features for p in placed]))
    how = "its transform" if method != "tsne" else "the weighted mean of their nearest training images"
    title = f"Run #{run['id']}: {run['backbone']} training images, {MAP_METHODS[method]}"
    st.plotly_chart(
        placed_map_figure(
            embedding=feature_map.embedding,
            labels=predictor.reference_labels(),
            class_names=predictor.class_names,
            file_names=[path.name for path in predictor.reference_paths()],
            placed=positions,
            placed_names=[p.name for p in placed],
            title=title,
            placed_numbers=numbers,
            unfamiliar=[bool(p.unfamiliar) for p in placed],
        ),
        key=f"map-{run['id']}",
    )
    apart = [str(n) for n, p in zip(numbers, placed) if p.unfamiliar]
    st.caption(
        f"★ = your images, numbered as in the list, placed on the {MAP_METHODS[method]} map by {how}; class colours "
        "as on the Explorer."
        + (
            f" Image(s) {', '.join(apart)} look like no training image: they are drawn apart, right of the map "
            "(open grey stars), since any place inside it would suggest a resemblance that is not there."
            if apart
            else ""
        )
        + (
            f" The map is of {markdown_text(run['backbone'])}'s default pooled features "
            f"({predictor.backbone.default_variant}), not of the patch tokens the attentive head reads."
            if predictor.reads_tokens
            else ""
        )
    )


def show_results(predictors: list[Predictor], items: list[tuple[str, str, object]]) -> None:
    """Predict ``items`` with each predictor; table (batches), details per image, and where they land on the map."""
    per_run = [(predictor, _classify(predictor, items)) for predictor in predictors]
    wanted = {(p.run["id"], key) for p in predictors for key, _, _ in items}
    st.session_state[_MEMO_KEY] = {k: v for k, v in st.session_state[_MEMO_KEY].items() if k in wanted}

    first = per_run[0][1]
    names = [p.name for p in first]
    for prediction in first:
        if not prediction.ok:
            st.warning(markdown_text(prediction.error), icon=":material/broken_image:")
    good = [i for i, p in enumerate(first) if p.ok]
    if len(items) > 1:
        _batch_table(names, per_run)
    if not good:
        return
    shown = (
        good
        if len(good) <= DETAIL_LIMIT
        else [
            st.selectbox(
                "Show details for",
                good,
                format_func=lambda i: f"{i + 1}. {names[i]}",
            )
        ]
    )
    for index in shown:
        _details(index, names[index], [(predictor, predictions[index]) for predictor, predictions in per_run])

    st.subheader("Where your images land")
    method = st.radio(
        "Map",
        list(MAP_METHODS),
        format_func=MAP_METHODS.get,
        horizontal=True,
        key="classify_method",
        help="UMAP and PCA place a photo with their own transform; t-SNE, which has none, by its "
        "nearest training images.",
    )
    for column, (predictor, predictions) in zip(st.columns(len(per_run)), per_run):
        with column:
            _map(predictor, predictions, method)
