"""Explorer: 2-D t-SNE maps of runs' cached features, with the photo under the mouse.

Choose one or two completed runs on the same dataset (by default the newest run of each of the two
most recently trained backbones on the newest run's dataset); their maps sit side by side with the
same colour per class. Hovering a point shows its photo, class, file and prediction in the browser
(``ui.hover_scatter``, no server round trip). A click or a box/lasso selection opens a gallery of the
selected photos; for a single photo, its nearest neighbours in each backbone's full feature space.
The selected photos stay ringed in both maps.

Maps are cached per (features file, rows shown, perplexity, PCA): a rerun that does not change them
costs no t-SNE. Dataset rows are the global row ids everywhere (traces, tooltips, sprite sheets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import streamlit as st
from plotly.colors import qualitative

from core.datasets import Dataset
from core.features import FeatureSet, read_features
from core.progress import ProgressEvent
from core.projection import cosine_neighbours, tsne_embedding
from ui.auth import require_access
from ui.common import (
    cached_dataset, dataset_label, list_runs, md, run_label, run_predictions, stage_text, thumbnail, user_errors, weights_label,
    workspace,
)
from ui.hover_scatter import HoverText, Panel, Trace, hover_scatter, last_event, prepare_thumbnails

require_access()  # first: no Streamlit mode runs this page past the access gate

MAX_PANELS = 2  # two maps side by side still leave each one wide enough to read clusters
PARTS = {"all": "all images", "train": "train", "val": "validation", "test": "test"}
COLOUR_MODES = {"class": "true class", "predicted": "predicted class", "correct": "correct / incorrect"}
# 48 distinct colours (Oxford 17 needs 17); class i has colour i in every panel, so a class matches across maps.
CLASS_COLOURS = tuple(qualitative.Dark24) + tuple(qualitative.Light24)
CORRECT_COLOUR, WRONG_COLOUR, UNPREDICTED_COLOUR = "#2CA02C", "#D62728", "#B0B0B0"
NOT_PREDICTED = "(no prediction)"  # parenthesised so it cannot look like a class name
PCA_COMPONENTS = 50  # t-SNE's usual denoising step; 50 dims keep >90 % of these features' variance
SEED = 0  # the same inputs always give the same map
MIN_POINTS = 5  # below this a t-SNE map says nothing
THUMB_PX = 128  # gallery photos: big enough to tell two flowers of a class apart
GALLERY_LIMIT = 48  # photos per gallery: enough to see what a lasso caught, few enough to load quickly
_SELECTION_KEY = "explorer_selection"  # rows the last click or selection picked
_SEQ_KEY = "explorer_seq"  # seq of the last event acted on: the component repeats its value on every rerun
_VIEW_KEY = "explorer_view"  # what was shown when the selection was made; a new view clears the selection
_MAP_KEY = "explorer-map"


# ----------------------------------------------------------------------------------------------- cached data


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@st.cache_resource(show_spinner=False, max_entries=4)
def _features(path: str, stamp: tuple[int, int]) -> FeatureSet:
    # A resource, not data: 20,000 x 1,280 float32 is 100 MB, which cache_data would copy on every rerun.
    return read_features(path)


@st.cache_data(show_spinner=False, max_entries=32)
def _embedding(path: str, stamp: tuple[int, int], rows: np.ndarray, perplexity: float, pca: bool, _features: np.ndarray) -> np.ndarray:
    """t-SNE of ``_features`` (the features of ``rows`` in file ``path``); the key leaves the array out."""
    # Created inside the cached function so that a cache hit replays it (ending empty) instead of
    # referring to an element of an earlier run.
    bar = st.progress(0.0, text=f"t-SNE of {len(rows):,} points…")

    def progress(event: ProgressEvent) -> None:
        bar.progress(event.fraction, text=stage_text(event))

    embedding = tsne_embedding(
        _features, perplexity=perplexity, pca_components=PCA_COMPONENTS if pca else None, seed=SEED, progress=progress
    )
    bar.empty()
    return embedding


def _thumbnails(dataset: Dataset):
    """Sprite sheets of every dataset image (built once; later calls only check the files' dates)."""
    slot = st.empty()
    source = prepare_thumbnails(
        dataset.image_paths, workspace=workspace(), progress=lambda e: slot.progress(e.fraction, text=stage_text(e))
    )
    slot.empty()
    return source


# ----------------------------------------------------------------------------------------------- pure helpers


def default_runs(runs: list[dict]) -> list[dict]:
    """The newest run of each of the ``MAX_PANELS`` most recently trained backbones, oldest first; ``runs`` newest first.

    Oldest first puts a comparison's backbones in the order it trained them (DINOv2, then ResNet-50).
    """
    latest: dict[str, dict] = {}
    for run in runs:
        latest.setdefault(run["backbone"], run)
    return sorted(list(latest.values())[:MAX_PANELS], key=lambda run: run["id"])


def common_rows(feature_sets: list[FeatureSet], part_rows: np.ndarray) -> np.ndarray:
    """Rows of ``part_rows`` that every feature set has (unreadable images drop out), ascending."""
    rows = np.unique(part_rows)
    for features in feature_sets:
        rows = features.select(rows)[1]
    return rows


def predicted_classes(predictions: dict[int, int], rows: np.ndarray) -> np.ndarray:
    """Predicted class index of each row, -1 where the run made no prediction (not a test image)."""
    return np.array([predictions.get(int(row), -1) for row in rows], dtype=np.int64)


def prediction_texts(class_names: tuple[str, ...], per_run: dict[int, dict[int, int]], n_rows: int) -> list[str | None] | None:
    """Tooltip prediction per dataset row: the class when the runs agree, each run's when they differ; None when none predicted."""
    if not any(per_run.values()):
        return None
    texts: list[str | None] = [None] * n_rows
    for row in set().union(*per_run.values()):
        guesses = {run_id: predictions[row] for run_id, predictions in per_run.items() if row in predictions}
        if len(set(guesses.values())) == 1:
            texts[row] = class_names[next(iter(guesses.values()))]
        else:
            texts[row] = " · ".join(f"#{run_id} {class_names[guess]}" for run_id, guess in guesses.items())
    return texts


def panel_traces(
    embedding: np.ndarray, rows: np.ndarray, *, labels: np.ndarray, predicted: np.ndarray, class_names: tuple[str, ...],
    colour_by: str,
) -> list[Trace]:
    """One trace per legend entry: classes (true or predicted, coloured by class index) or correct / incorrect.

    Parameters
    ----------
    embedding : ndarray of shape (n_points, 2)
    rows : ndarray of shape (n_points,), dataset row of each point
    labels : ndarray of shape (n_points,), true class index
    predicted : ndarray of shape (n_points,), predicted class index, -1 where none (used unless ``colour_by`` is "class")
    colour_by : {"class", "predicted", "correct"}
    """
    class_colours = [CLASS_COLOURS[i % len(CLASS_COLOURS)] for i in range(len(class_names))]
    if colour_by == "class":
        groups, names, colours = labels, list(class_names), class_colours
    elif colour_by == "predicted":
        groups = np.where(predicted < 0, len(class_names), predicted)
        names, colours = [*class_names, NOT_PREDICTED], [*class_colours, UNPREDICTED_COLOUR]
    else:
        groups = np.where(predicted < 0, 2, (predicted != labels).astype(np.int64))
        names, colours = ["correct", "incorrect", NOT_PREDICTED], [CORRECT_COLOUR, WRONG_COLOUR, UNPREDICTED_COLOUR]
    traces = []
    for group, (name, colour) in enumerate(zip(names, colours)):
        members = np.flatnonzero(groups == group)
        if len(members) == 0:
            continue
        correct = None if colour_by != "correct" else (predicted[members] == labels[members]) | (predicted[members] < 0)
        traces.append(Trace(name=name, x=embedding[members, 0], y=embedding[members, 1], rows=rows[members], colour=colour, correct=correct))
    return traces


# ----------------------------------------------------------------------------------------------- sections


def _predictions(run: dict) -> dict[int, int]:
    """Dataset row -> predicted class index, for the run's test images."""
    frame = run_predictions(run)
    return dict(zip(frame["row"].astype(int).tolist(), frame["predicted"].astype(int).tolist()))


def _choose_runs(runs: list[dict]) -> tuple[str, list[dict]]:
    datasets: dict[str, str] = {}
    for run in runs:  # newest first, so the default dataset is that of the newest run
        datasets.setdefault(run["dataset_key"], dataset_label(run["dataset_name"], run["synthetic"]))
    dataset_key = st.selectbox("Dataset", list(datasets), format_func=datasets.get, key="explorer_dataset")
    on_dataset = {run["id"]: run for run in runs if run["dataset_key"] == dataset_key}
    chosen = st.multiselect(
        "Runs (one map each, side by side)", list(on_dataset), default=[run["id"] for run in default_runs(list(on_dataset.values()))],
        format_func=lambda i: f"{run_label(on_dataset[i])} · {on_dataset[i]['test_acc']:.1f} %", max_selections=MAX_PANELS,
        key=f"explorer_runs_{dataset_key}",
    )
    return dataset_key, [on_dataset[i] for i in chosen]


def _gallery(dataset: Dataset, rows: list[int], captions: list[str]) -> None:
    """Thumbnails of ``rows`` with plain-text captions; unreadable files show the placeholder, said so."""
    thumbs = [thumbnail(dataset.image_paths[row], size=THUMB_PX) for row in rows]
    st.image([data for data, _ in thumbs], width=THUMB_PX, output_format="JPEG",
             caption=[md(text + ("" if ok else " (unreadable)")) for text, (_, ok) in zip(captions, thumbs)])


def _photo_caption(dataset: Dataset, row: int) -> str:
    """Class, then file name on its own line (md() keeps the line break)."""
    return f"{dataset.class_names[dataset.labels[row]]}\n{dataset.image_paths[row].name}"


def _neighbours(dataset: Dataset, row: int, rows: np.ndarray, runs: list[dict], features: list[np.ndarray], k: int) -> None:
    st.subheader("Nearest neighbours")
    name = f"{dataset.image_paths[row].name} ({dataset.class_names[dataset.labels[row]]})"
    st.caption(md(f"of {name}, by cosine distance between full feature vectors, among the {len(rows):,} images on the map"))
    position = int(np.searchsorted(rows, row))
    for index, (column, run, matrix) in enumerate(zip(st.columns(len(runs)), runs, features)):
        # k + 1: the photo itself comes back too (distance 0), dropped below
        found, distances = cosine_neighbours(matrix, matrix[position:position + 1], k=k + 1)
        kept = [(int(rows[i]), float(d)) for i, d in zip(found[0], distances[0]) if i != position][:k]
        with column.container(key=f"explorer-neighbours-{index}"):
            st.markdown(f"**{md(run_label(run))}** · {matrix.shape[1]}-d features")
            _gallery(dataset, [r for r, _ in kept], [f"{d:#.3g} · {_photo_caption(dataset, r)}" for r, d in kept])


def _selection(event: dict | None, view: tuple) -> list[int]:
    """The rows picked by the newest click or selection; an event is acted on once, a new view starts empty."""
    if st.session_state.get(_VIEW_KEY) != view:
        st.session_state[_VIEW_KEY] = view
        st.session_state[_SELECTION_KEY] = []
    if event is not None and event["seq"] != st.session_state.get(_SEQ_KEY):
        st.session_state[_SEQ_KEY] = event["seq"]
        st.session_state[_SELECTION_KEY] = event["rows"]
    return st.session_state.get(_SELECTION_KEY, [])


@dataclass(frozen=True)
class MapChoice:
    """What the controls above the maps chose."""

    part: str  # key of PARTS
    rows: np.ndarray  # shape (n_points,): dataset rows on the maps, ascending
    predicted: list[np.ndarray]  # per run, shape (n_points,): predicted class index, -1 where none
    colour_by: str  # key of COLOUR_MODES
    perplexity: int
    pca: bool
    k: int  # neighbours shown for a single photo


def _runs_to_show() -> tuple[Dataset, list[dict]] | None:
    """The dataset and the one or two runs to map, or None after saying why there is nothing to show."""
    completed = list_runs(status="completed")
    runs = [run for run in completed if run["features_path"] and _file_stamp(run["features_path"])]
    if not runs:
        missing = len(completed) - len(runs)
        st.info(
            "No run with cached features yet. Train a head on the Train page (or the one-click comparison on Home): "
            "the features it extracts are what this page maps."
            + (f" ({missing} completed run(s) lost their cached features file.)" if missing else ""),
            icon=":material/info:",
        )
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        return None
    dataset_key, chosen = _choose_runs(runs)
    if not chosen:
        st.info("Choose one run, or two to compare their maps side by side.", icon=":material/info:")
        return None
    dataset = cached_dataset(dataset_key)
    fingerprint = dataset.fingerprint
    stale = [run for run in chosen if run["dataset_fingerprint"] != fingerprint]
    if stale:
        ids = ", ".join(f"#{run['id']}" for run in stale)
        st.warning(md(f"The images of {dataset.name} changed since run(s) {ids} were trained, so their features no longer "
                      "match the photos. Train again on the current images."), icon=":material/warning:")
    chosen = [run for run in chosen if run not in stale]
    return (dataset, chosen) if chosen else None


def _controls(dataset: Dataset, runs: list[dict], feature_sets: list[FeatureSet], predictions: dict[int, dict[int, int]]) -> MapChoice:
    columns = st.columns([1, 1.3, 1.4, 1.1, 1])
    part = columns[0].selectbox("Images", list(PARTS), format_func=PARTS.get, key="explorer_part",
                                help=f"Which images of split {runs[0]['split']} to map.")
    part_rows = np.arange(len(dataset.image_paths)) if part == "all" else dataset.split(runs[0]["split"])[part]
    rows = common_rows(feature_sets, part_rows)
    predicted = [predicted_classes(predictions[run["id"]], rows) for run in runs]
    modes = list(COLOUR_MODES) if any((p >= 0).any() for p in predicted) else ["class"]
    if st.session_state.get("explorer_colour") not in modes:  # e.g. "predicted" chosen, then train images
        st.session_state["explorer_colour"] = "class"
    colour_by = columns[1].selectbox("Colour by", modes, format_func=COLOUR_MODES.get, key="explorer_colour",
                                     help="Predicted class and correct / incorrect need test images: runs predict only those.")
    perplexity = columns[2].slider("Perplexity", 5, 100, 30, step=5, key="explorer_perplexity",
                                   help="Roughly how many neighbours each point keeps close; larger values show more global structure.")
    pca = columns[3].toggle(f"PCA to {PCA_COMPONENTS} dims", value=True, key="explorer_pca",
                            help="PCA before t-SNE denoises the features and speeds it up; turn off to map the raw features.")
    k = columns[4].number_input("Neighbours (k)", 1, 32, 8, key="explorer_k", help="Nearest neighbours shown for a clicked photo.")
    return MapChoice(part=part, rows=rows, predicted=predicted, colour_by=colour_by, perplexity=perplexity, pca=pca, k=int(k))


def _show_selection(dataset: Dataset, selected: list[int], choice: MapChoice, runs: list[dict], features: list[np.ndarray]) -> None:
    st.subheader(f"Selected photos ({len(selected)})")
    shown = selected[:GALLERY_LIMIT]
    _gallery(dataset, shown, [_photo_caption(dataset, row) for row in shown])
    if len(selected) > GALLERY_LIMIT:
        st.caption(f"Showing the first {GALLERY_LIMIT} of {len(selected)}.")
    if len(selected) == 1:
        _neighbours(dataset, selected[0], choice.rows, runs, features, choice.k)


def _main() -> None:
    shown = _runs_to_show()
    if shown is None:
        return
    dataset, runs = shown
    stamps = [_file_stamp(run["features_path"]) for run in runs]
    feature_sets = [_features(run["features_path"], stamp) for run, stamp in zip(runs, stamps)]
    predictions = {run["id"]: _predictions(run) for run in runs}
    choice = _controls(dataset, runs, feature_sets, predictions)
    rows = choice.rows
    if len(rows) < MIN_POINTS:
        st.info(f"Only {len(rows)} readable image(s) here: a map needs at least {MIN_POINTS}. Choose more images.", icon=":material/info:")
        return

    # t-SNE needs 3 x perplexity neighbours per point; small sets get the largest perplexity they allow.
    perplexity = float(min(choice.perplexity, (len(rows) - 1) / 3))
    features = [feature_set.select(rows)[0] for feature_set in feature_sets]
    embeddings = [_embedding(run["features_path"], stamp, rows, perplexity, choice.pca, matrix)
                  for run, stamp, matrix in zip(runs, stamps, features)]
    thumbnails = _thumbnails(dataset)
    panels = [
        Panel(title=f"#{run['id']} {run['backbone']} ({weights_label(run['weights'])}) · test {run['test_acc']:.1f} %",
              traces=panel_traces(embedding, rows, labels=dataset.labels[rows], predicted=predicted,
                                  class_names=dataset.class_names, colour_by=choice.colour_by))
        for run, embedding, predicted in zip(runs, embeddings, choice.predicted)
    ]
    hover_text = HoverText(
        class_names=[dataset.class_names[label] for label in dataset.labels],
        file_names=[path.name for path in dataset.image_paths],
        predictions=prediction_texts(dataset.class_names, predictions, len(dataset.image_paths)),
    )
    on_map = set(rows.tolist())
    view = (dataset.key, tuple(run["id"] for run in runs), choice.part)
    # Read before drawing the maps, so that they ring what this rerun's click or selection picked.
    selected = [row for row in _selection(last_event(_MAP_KEY), view) if row in on_map]
    hover_scatter(panels, hover_text=hover_text, thumbnails=thumbnails, height=560, selected_rows=selected, key=_MAP_KEY)
    lowered = f" (lowered from {choice.perplexity} for {len(rows)} points)" if perplexity < choice.perplexity else ""
    st.caption(
        f"{len(rows):,} images · t-SNE of {f'PCA-{PCA_COMPONENTS} of ' if choice.pca else ''}the cached features, "
        f"perplexity {perplexity:g}{lowered}. Hover a point for its photo; click one, or box/lasso-select several "
        "(tools at the top right), for a gallery; click a legend entry to hide a class, double-click to show only it."
    )

    if selected:
        _show_selection(dataset, selected, choice, runs, features)


st.title(":material/scatter_plot: Explorer")
st.caption("Each backbone's features of every photo, flattened to 2-D with t-SNE: photos the backbone finds alike sit "
           "together. Tight single-colour clusters mean features that separate the classes.")
with user_errors():
    _main()
