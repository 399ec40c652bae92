"""The Explorer page's logic: which runs to map, the map controls, the panels, the selection gallery.

``pages/explorer.py`` reads top to bottom (title, ``choose_view()``, ``show_view(view)``); everything
it draws is decided here, and the pure parts (default runs, common rows, traces per colouring,
scores) are plain functions tested without a page.

Maps come from ``core.maps.projection.cached_map``: t-SNE, UMAP or PCA, each cached per (features,
method, parameters) in this process and under ``<workspace>/features/maps/``, so a rerun that does
not change them computes nothing. A map not made yet, and the data-health scores, are computed by the job
runner (``core.jobs.runner``), never on the page's thread: the page shows the job's progress bar and draws
the result on the rerun after the job ends. Dataset rows are the global row ids everywhere (traces,
tooltips, sprite sheets). Colour by: true class, predicted class or correct / incorrect of a chosen
run (any protocol: every run records per-image test predictions), or any per-image score
(``ImageScore``: a run's prediction confidence, and the data-health scores of ``core.health.checks`` where
that module offers them), on a colour bar.

Two maps are linked: either can be coloured by each photo's neighbour agreement between the two runs' feature
spaces (``core.agreement.measures.neighbour_agreement``, a fixed 0..1 colour bar), "only where they disagree"
keeps the photos whose two neighbourhoods share fewer than a chosen share (drawn where the whole map placed
them), and a box or lasso on one map greys every other photo on both (plotly.js's ``unselected`` style; a click
rings instead). A selection gets a per-class summary and CSV exports (``core.base.csv_export``); the tooltip
says each photo's prediction, right or wrong, and its part of the split.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import streamlit as st

from core.agreement.measures import DEFAULT_K as DEFAULT_AGREEMENT_K
from core.agreement.measures import neighbour_agreement
from core.base.csv_export import csv_text
from core.base.errors import FlowerProbeError
from core.base.text import markdown_text
from core.data.datasets import Dataset
from core.data.exclusions import relative_path
from core.features.extract import FeatureSet, read_features
from core.jobs.runner import Job, progress_job
from core.maps.projection import (
    MAP_METHODS,
    MIN_MAP_POINTS,
    FeatureMap,
    MapParams,
    cached_map,
    cosine_neighbours,
    fit_map_params,
)
from core.runs.naming import run_name
from core.runs.sanity import DEFAULT_RULE
from core.runs.sanity import default_runs as sanity_default_runs
from ui.charts import class_colours
from ui.hover_scatter import (
    BACKGROUND_FROM,
    ColourBar,
    HoverText,
    Panel,
    Trace,
    hover_scatter,
    last_event,
    planned_thumbnails,
    prepare_thumbnails,
)
from ui.jobs import live_jobs, stage_text
from ui.state import (
    cached_dataset,
    job_runner,
    list_runs,
    run_files,
    run_predictions,
    show_run_warnings,
    workspace,
)
from ui.widgets import choose_dataset, choose_map_method, linked_run_ids, nothing_to_show, photo_grid

MAX_PANELS = 2  # two maps side by side still leave each one wide enough to read clusters
PARTS = {"all": "all images", "train": "train", "val": "validation", "test": "test"}
COLOUR_MODES = {"class": "true class", "predicted": "predicted class", "correct": "correct / incorrect"}
OWN_RUN = 0  # "predictions of": each map's own run (run ids start at 1)
AGREEMENT_MODE = "agreement"  # colour-by entry of two maps: each photo's neighbour agreement between their spaces
HEALTH_MODE = "health"  # colour-by entry that computes the data-health scores, then offers each of them
CORRECT_COLOUR, WRONG_COLOUR, UNPREDICTED_COLOUR = "#2CA02C", "#D62728", "#B0B0B0"
NOT_PREDICTED = "(no prediction)"  # parenthesised so it cannot look like a class name
NOT_SCORED = "(no score)"
PCA_COMPONENTS = 50  # before t-SNE and UMAP: 50 dims keep >90 % of these features' variance
THUMB_PX = 128  # gallery photos: big enough to tell two flowers of a class apart
GALLERY_LIMIT = 48  # photos per gallery: enough to see what a lasso caught, few enough to load quickly
_SELECTION_KEY = "explorer_selection"  # rows the last click or selection picked
_SELECTION_KIND_KEY = "explorer_selection_kind"  # "click" or "select" (a box or lasso: the maps grey the rest)
_SEQ_KEY = "explorer_seq"  # seq of the last event acted on: the component repeats its value on every rerun
_VIEW_KEY = "explorer_view"  # what was shown when the selection was made; a new view clears the selection
MAP_KEY = "explorer-map"


# ----------------------------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class ImageScore:
    """A per-image score to colour a map by: one value per dataset row, NaN where the image has none.

    Any source plugs in as one of these: a run's prediction confidence, a data-health score.
    """

    key: str  # unique among the scores offered, e.g. "confidence:12"
    name: str  # shown in the picker and on the colour bar
    values: np.ndarray  # shape (n_dataset_rows,), float, NaN where not scored
    bounds: tuple[float, float] | None = None  # the colour bar's fixed range (e.g. 0..1 for a share); None: the data's

    def __post_init__(self) -> None:
        if np.asarray(self.values).ndim != 1:
            raise ValueError(f"ImageScore values must be 1-D (one per dataset row); got shape {np.shape(self.values)}.")


def confidence_score(run: dict, predictions: dict[int, tuple[int, float]], n_rows: int) -> ImageScore:
    """The run's softmax confidence in its prediction, for the images it predicted (its test images)."""
    values = np.full(n_rows, np.nan)
    for row, (_, confidence) in predictions.items():
        values[row] = confidence
    return ImageScore(key=f"confidence:{run['id']}", name=f"confidence of run #{run['id']}", values=values)


def health_scores(report, dataset: Dataset) -> list[ImageScore]:
    """The label-quality and outlier scores of a ``core.health.checks.HealthReport``, per dataset row.

    The report numbers images by its ``paths`` (dataset-relative); rows it did not analyse (excluded,
    unreadable, and the test part for label quality) stay NaN.
    """
    index_of = {relative_path(dataset, row): row for row in range(len(dataset.image_paths))}
    rows = np.array([index_of.get(path, -1) for path in report.paths])
    where = f"{report.backbone} features"
    scores = []
    for key, name, entries in (
        ("label", f"label quality, low = likely mislabeled ({where})", report.label_issues),
        ("outlier", f"outlier score, high = unusual ({where})", report.outliers),
    ):
        values = np.full(len(dataset.image_paths), np.nan)
        for entry in entries:
            row = rows[entry["image"]]
            if row >= 0:
                values[row] = entry["score"]
        scores.append(ImageScore(key=f"health:{key}:{report.backbone}", name=name, values=values))
    return scores


def score_range(values: np.ndarray) -> tuple[float, float]:
    """Colour bar range of ``values``: min and max of the finite ones ((0, 1) when none)."""
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)


def agreement_score(
    agreement: np.ndarray, rows: np.ndarray, *, n_rows: int, k: int, names: tuple[str, str]
) -> ImageScore:
    """Per-image neighbour agreement of the two maps' feature spaces as a score on a fixed 0..1 colour bar.

    Parameters
    ----------
    agreement : ndarray of shape (n_points,)
        ``core.agreement.measures.neighbour_agreement`` of the two runs' features on ``rows``.
    rows : ndarray of shape (n_points,), the dataset row of each value
    n_rows : int, the dataset's number of rows
    k : int, the neighbours compared per image
    names : the two runs' short names, for the colour bar's title
    """
    values = np.full(n_rows, np.nan)
    values[np.asarray(rows, dtype=np.int64)] = agreement
    return ImageScore(
        key=f"{AGREEMENT_MODE}:{k}",
        name=f"neighbour agreement: share of the {k} nearest neighbours that {names[0]} and {names[1]} share",
        values=values,
        bounds=(0.0, 1.0),
    )


def disagreeing(agreement: np.ndarray, *, below: float) -> np.ndarray:
    """Mask of the photos whose two neighbourhoods share fewer than ``below`` of their neighbours.

    Parameters
    ----------
    agreement : ndarray of shape (n_points,), shares in [0, 1]
    below : float in (0, 1]
    """
    if not 0.0 < below <= 1.0:
        raise FlowerProbeError(f"below must be a share in (0, 1]; got {below}.")
    return np.asarray(agreement) < below


def verdict_texts(labels: np.ndarray, per_run: dict[int, dict[int, tuple[int, float]]]) -> list[str | None] | None:
    """Tooltip verdict per dataset row: "right" or "wrong" when every run that predicted it says the same, else
    each run's (``"#3 right · #4 wrong"``); None for rows no run predicted, and None when no run predicted anything.

    Parameters
    ----------
    labels : ndarray of shape (n_dataset_rows,), true class index per row
    per_run : run id -> row -> (predicted class, confidence)
    """
    if not any(per_run.values()):
        return None
    texts: list[str | None] = [None] * len(labels)
    for row in set().union(*per_run.values()):
        verdicts = {
            run_id: "right" if predictions[row][0] == labels[row] else "wrong"
            for run_id, predictions in per_run.items()
            if row in predictions
        }
        if len(set(verdicts.values())) == 1:
            texts[row] = next(iter(verdicts.values()))
        else:
            texts[row] = " · ".join(f"#{run_id} {verdict}" for run_id, verdict in verdicts.items())
    return texts


def split_texts(parts: dict[str, np.ndarray], n_rows: int) -> list[str | None]:
    """Each dataset row's part of a split ("train", "val", "test"); None for a row in none (e.g. excluded).

    Parameters
    ----------
    parts : part name -> ndarray of dataset rows (``Dataset.split(split_id)``)
    n_rows : int
    """
    texts: list[str | None] = [None] * n_rows
    for part, members in parts.items():
        for row in np.asarray(members, dtype=np.int64).tolist():
            texts[row] = part
    return texts


def selection_summary(
    selected: list[int],
    *,
    labels: np.ndarray,
    class_names: tuple[str, ...],
    on_map: np.ndarray,
    per_run: dict[int, dict[int, tuple[int, float]]],
) -> list[dict]:
    """Per class of the selected photos: how many, their share of the selection, the share of the class's photos
    on the map they are, and per run how many it predicted right and wrong (test photos only).

    Parameters
    ----------
    selected : dataset rows selected
    labels : ndarray of shape (n_dataset_rows,), true class index per row
    class_names : tuple of str
    on_map : ndarray of shape (n_points,), the dataset rows on the maps
    per_run : run id -> row -> (predicted class, confidence); one column pair per run

    Returns
    -------
    list of dict, one per class present in ``selected``, most selected first; keys ``class``, ``selected``,
    ``share of selection (%)``, ``of the class on the map (%)``, then ``run #N right`` and ``run #N wrong``.
    """
    chosen = np.asarray(selected, dtype=np.int64)
    on_map_counts = np.bincount(labels[np.asarray(on_map, dtype=np.int64)], minlength=len(class_names))
    counts = np.bincount(labels[chosen], minlength=len(class_names)) if len(chosen) else np.zeros(len(class_names))
    summary = []
    for index in np.argsort(-counts, kind="stable"):
        if counts[index] == 0:
            break
        members = chosen[labels[chosen] == index]
        entry = {
            "class": class_names[index],
            "selected": int(counts[index]),
            "share of selection (%)": round(100.0 * counts[index] / len(chosen), 1),
            "of the class on the map (%)": round(100.0 * counts[index] / max(1, on_map_counts[index]), 1),
        }
        for run_id, predictions in per_run.items():
            guesses = [predictions[row][0] for row in members.tolist() if row in predictions]
            entry[f"run #{run_id} right"] = sum(guess == index for guess in guesses)
            entry[f"run #{run_id} wrong"] = sum(guess != index for guess in guesses)
        summary.append(entry)
    return summary


# ----------------------------------------------------------------------------------------------- pure helpers


def default_runs(runs: list[dict]) -> list[dict]:
    """``core.runs.sanity.DEFAULT_RULE`` (the best on validation per backbone and weights) for the ``MAX_PANELS`` most
    recently trained (backbone, weights), oldest first.

    ``runs`` is newest first. A backbone under other weights is another model (the offline demo compares
    EfficientNet-Lite0 pretrained with random weights), so each gets its own map. Oldest first puts a comparison's
    backbones in the order it trained them (DINOv2, then ResNet-50).
    """
    recent = list(dict.fromkeys((run["backbone"], run["weights"]) for run in runs))[:MAX_PANELS]
    return [run for run in sanity_default_runs(runs) if (run["backbone"], run["weights"]) in recent]


def common_rows(feature_sets: list[FeatureSet], part_rows: np.ndarray) -> np.ndarray:
    """Rows of ``part_rows`` that every feature set has (unreadable images drop out), ascending."""
    rows = np.unique(part_rows)
    for features in feature_sets:
        rows = features.select(rows)[1]
    return rows


def predicted_classes(predictions: dict[int, tuple[int, float]], rows: np.ndarray) -> np.ndarray:
    """Predicted class index of each row, -1 where the run made no prediction (not a test image)."""
    return np.array([predictions[int(row)][0] if int(row) in predictions else -1 for row in rows], dtype=np.int64)


def prediction_texts(
    class_names: tuple[str, ...], per_run: dict[int, dict[int, tuple[int, float]]], n_rows: int
) -> list[str | None] | None:
    """Tooltip prediction per dataset row: the class when the runs agree, each run's when they differ.

    None when no run predicted.
    """
    if not any(per_run.values()):
        return None
    texts: list[str | None] = [None] * n_rows
    for row in set().union(*per_run.values()):
        guesses = {run_id: predictions[row][0] for run_id, predictions in per_run.items() if row in predictions}
        if len(set(guesses.values())) == 1:
            texts[row] = class_names[next(iter(guesses.values()))]
        else:
            texts[row] = " · ".join(f"#{run_id} {class_names[guess]}" for run_id, guess in guesses.items())
    return texts


def panel_traces(
    embedding: np.ndarray,
    rows: np.ndarray,
    *,
    labels: np.ndarray,
    predicted: np.ndarray,
    class_names: tuple[str, ...],
    colour_by: str,
    score: np.ndarray | None = None,
) -> list[Trace]:
    """One trace per legend entry.

    Classes (true or predicted, coloured by class index), correct / incorrect, or a score.

    Parameters
    ----------
    embedding : ndarray of shape (n_points, 2)
    rows : ndarray of shape (n_points,), dataset row of each point
    labels : ndarray of shape (n_points,), true class index
    predicted : ndarray of shape (n_points,), predicted class index, -1 where none (for "predicted" and "correct")
    colour_by : {"class", "predicted", "correct", "score"}
    score : ndarray of shape (n_points,), NaN where not scored (for "score")
    """

    def trace(members: np.ndarray, name: str, colour: str, **extra) -> Trace:
        """The points at positions ``members`` as one legend entry; ``extra``: Trace's optional fields, per point."""
        at = embedding[members]
        return Trace(name=name, x=at[:, 0], y=at[:, 1], rows=rows[members], colour=colour, **extra)

    if colour_by == "score":
        if score is None or len(score) != len(rows):
            raise ValueError(
                f"colour_by='score' needs one score per point ({len(rows)}); "
                f"got {None if score is None else len(score)}."
            )
        scored = np.isfinite(score)
        traces = []
        if (~scored).any():  # grey, drawn first so scored points sit on top
            traces.append(trace(np.flatnonzero(~scored), NOT_SCORED, UNPREDICTED_COLOUR))
        if scored.any():
            members = np.flatnonzero(scored)
            traces.append(trace(members, "score", UNPREDICTED_COLOUR, values=score[members]))
        return traces
    colours = class_colours(len(class_names))
    if colour_by == "class":
        groups, names = labels, list(class_names)
    elif colour_by == "predicted":
        groups = np.where(predicted < 0, len(class_names), predicted)
        names, colours = [*class_names, NOT_PREDICTED], [*colours, UNPREDICTED_COLOUR]
    elif colour_by == "correct":
        groups = np.where(predicted < 0, 2, (predicted != labels).astype(np.int64))
        names, colours = ["correct", "incorrect", NOT_PREDICTED], [CORRECT_COLOUR, WRONG_COLOUR, UNPREDICTED_COLOUR]
    else:
        raise ValueError(f"colour_by must be 'class', 'predicted', 'correct' or 'score'; got {colour_by!r}.")
    traces = []
    for group, (name, colour) in enumerate(zip(names, colours)):
        members = np.flatnonzero(groups == group)
        if len(members) == 0:
            continue
        correct = None if colour_by != "correct" else (predicted[members] == labels[members]) | (predicted[members] < 0)
        traces.append(trace(members, name, colour, correct=correct))
    return traces


# ----------------------------------------------------------------------------------------------- cached data


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _features_file(run: dict) -> str:
    """The run's feature cache in this workspace ("" if it recorded none).

    Found through ``core.runs.files``, so a moved workspace works.
    """
    return str(run_files(run).features or "")


@st.cache_resource(show_spinner=False, max_entries=4)
def _features(path: str, stamp: tuple[int, int]) -> FeatureSet:
    # A resource, not data: 20,000 x 1,280 float32 is 100 MB, which cache_data would copy on every rerun.
    return read_features(path)


def _maps_dir():
    return workspace().features_dir / "maps"


# ----------------------------------------------------------------------------------------------- long work as jobs
# A map's fit (t-SNE: seconds to minutes) and the data-health checks run in the job runner (core.jobs.runner), never
# in the page's thread, as the sprite sheets do: the page looks the result up (memory, then disk), queues a job when it
# is not there, shows the job's progress bar, and draws the result on the rerun that follows the job's end.

_PENDING_KEY = "explorer_pending_jobs"  # what this session queued: work key -> job id (a failed job is not resubmitted)


class _NotReady(Exception):
    """Raised inside a cached lookup when the result is not computed yet, so that Streamlit caches nothing."""


@st.cache_resource(show_spinner=False, max_entries=16)
def _ready_map(
    path: str, stamp: tuple[int, int], rows_digest: str, method: str, params: MapParams, _features: np.ndarray
) -> FeatureMap:
    """``cached_map`` of ``_features`` (the features of some rows of file ``path``) if it was made; the key leaves the
    array out, so a rerun does not even hash the features. ``_NotReady`` (cached by nothing) until it was made."""
    found = cached_map(_features, method=method, params=params, cache_dir=_maps_dir(), compute=False)
    if found is None:
        raise _NotReady
    return found


@st.cache_resource(show_spinner=False, max_entries=8)
def _ready_health(
    workspace_key: str, dataset_key: str, fingerprint: str, backbone: str, weights: str, variant: str | None, split: str
):
    """The health report (``core.health.checks.dataset_health``, from its disk cache) if computed; ``_NotReady``
    until then. Features are never extracted here."""
    from core.health.checks import dataset_health

    report = dataset_health(dataset_key, backbone, compute=False, **_health_options(weights, variant, split))
    if report is None:
        raise _NotReady
    return report


def _health_options(weights: str, variant: str | None, split: str) -> dict:
    from core.health.checks import HealthConfig

    return {"workspace": workspace(), "weights": weights, "variant": variant, "config": HealthConfig(split=split)}


def _job_for(work: tuple, title: str, make_target, *, kind: str) -> Job:
    """The job computing ``work`` (a hashable key): the one this session queued, an active one of ``kind`` for the
    same work (another session's), or a new one queued now with the target ``make_target()`` builds."""
    pending = st.session_state.setdefault(_PENDING_KEY, {})
    runner = job_runner()
    if work in pending:
        try:
            return runner.get(pending[work])
        except FlowerProbeError:  # the runner was restarted
            pending.pop(work)
    job = next(iter(runner.find(kinds=(kind,), key=repr(work), active=True)), None)
    if job is None:
        job = runner.submit(title, make_target(), kind=kind, key=repr(work))
    pending[work] = job.id
    return job


def _forget(work: tuple) -> None:
    st.session_state.setdefault(_PENDING_KEY, {}).pop(work, None)


def _job_bars(job_ids: list[int]) -> None:
    """A progress bar per job, with the job's latest stage; a failed one says why and offers to try again."""
    runner = job_runner()
    for job_id in job_ids:
        job = runner.get(job_id)
        if job.active:
            fraction = job.stage.fraction if job.stage is not None and job.status != "queued" else 0.0
            what = stage_text(job.stage) if job.stage is not None and job.status != "queued" else job.status
            st.progress(fraction, text=markdown_text(f"{job.title}: {what}"))
        elif job.status in ("failed", "cancelled"):
            st.warning(markdown_text(f"{job.title}: {job.status}. {job.error or ''}"), icon=":material/error:")
        else:  # completed, yet its result is not where the page looks (a full disk, a cleared cache)
            st.warning(
                markdown_text(f"{job.title}: finished, but its result is not in the cache."), icon=":material/error:"
            )


def _show_pending(jobs: dict[tuple, Job]) -> None:
    """Progress bars of ``jobs`` (work key -> job) that rerun every ``ui.jobs.JOB_REFRESH_S`` while any is active;
    when the last ends the page reruns and draws what they made. A failed or cancelled job can be queued again."""
    ids = [job.id for job in jobs.values()]
    live_jobs(lambda: _job_bars(ids), busy=lambda: any(job_runner().get(i).active for i in ids))
    ended = {work: job for work, job in jobs.items() if not job_runner().get(job.id).active}
    if ended and st.button("Try again", key=f"explorer-retry-{min(j.id for j in ended.values())}"):
        for work in ended:
            _forget(work)
        st.rerun()


def _map_or_job(
    run: dict, rows: np.ndarray, method: str, params: MapParams, features: np.ndarray
) -> tuple[FeatureMap | None, tuple, Job | None]:
    """``run``'s map of ``rows`` if made, else the job making it (queued now if needed): (map, work key, job)."""
    path = _features_file(run)
    stamp, digest = _file_stamp(path), _rows_digest(rows)
    work = ("map", path, stamp, digest, method, params)
    try:
        return _ready_map(path, stamp, digest, method, params, features), work, None
    except _NotReady:
        pass
    title = f"{MAP_METHODS[method]} map of {run_name(run)} ({len(rows):,} images, {params.describe(method)})"
    job = _job_for(
        work,
        title,
        lambda: progress_job(cached_map, features=features, method=method, params=params, cache_dir=_maps_dir()),
        kind="map",
    )
    return None, work, job


def _health_scores(dataset: Dataset, run: dict) -> list[ImageScore] | None:
    """The data-health scores of ``run``'s features; None while a job computes them (its progress bar is shown), or
    none (said on the page) when they cannot be computed."""
    from core.health.checks import dataset_health

    ws = workspace()
    key = (dataset.key, dataset.fingerprint, run["backbone"], run["weights"], run.get("features"), run["split"])
    try:
        report = _ready_health(f"{ws.root}|{ws.data_root}", *key)
    except _NotReady:
        options = _health_options(run["weights"], run.get("features"), run["split"])
        job = _job_for(
            ("health", *key),
            f"Data health of {dataset.name} ({run['backbone']} features)",
            lambda: progress_job(dataset_health, dataset_key=dataset.key, backbone=run["backbone"], **options),
            kind="health",
        )
        _show_pending({("health", *key): job})
        return None
    except FlowerProbeError as exc:
        st.info(markdown_text(f"No data-health scores: {exc}"), icon=":material/info:")
        return []
    return health_scores(report, dataset)


def _rows_digest(rows: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(rows, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


def _thumbnails(dataset: Dataset):
    """Sprite sheets of every dataset image (built once; later calls only check the files' dates).

    From ``BACKGROUND_FROM`` images on, the map does not wait for them: they are built by a job while the
    browser fetches each hovered point's sheet as soon as it exists.
    """
    if len(dataset.image_paths) >= BACKGROUND_FROM:
        source, ready = planned_thumbnails(dataset.image_paths, workspace=workspace())
        title = f"Thumbnails of {dataset.name}"
        key = f"thumbnails:{dataset.key}:{dataset.fingerprint}"
        if not ready and not job_runner().find(kinds=("map",), key=key, active=True):
            job_runner().submit(
                title,
                progress_job(prepare_thumbnails, paths=dataset.image_paths, workspace=workspace()),
                kind="map",
                key=key,
            )
        if not ready:
            st.caption(
                markdown_text(
                    f"{title}: being built in the background (sidebar); photos appear on hover as their "
                    "sheets are written."
                )
            )
        return source
    slot = st.empty()
    source = prepare_thumbnails(
        dataset.image_paths, workspace=workspace(), progress=lambda e: slot.progress(e.fraction, text=stage_text(e))
    )
    slot.empty()
    return source


def _predictions(run: dict) -> dict[int, tuple[int, float]]:
    """Dataset row -> (predicted class index, confidence), for the run's test images."""
    frame = run_predictions(run)
    return dict(
        zip(
            frame["row"].astype(int).tolist(),
            zip(frame["predicted"].astype(int).tolist(), frame["confidence"].astype(float).tolist()),
        )
    )


# ----------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Colouring:
    """How the maps are coloured: by what, with whose predictions, and the score when it is a score."""

    by: str  # "class", "predicted", "correct" or "score"
    runs: list[dict]  # per panel: the run whose predictions colour it
    predictions: dict[int, dict[int, tuple[int, float]]]  # run id -> row -> (class, confidence)
    score: ImageScore | None = None

    @property
    def per_run(self) -> dict[int, dict[int, tuple[int, float]]]:
        """The predictions of the runs that colour the panels, by run id (a run colouring both panels once)."""
        return {run["id"]: self.predictions[run["id"]] for run in self.runs}


@dataclass(frozen=True)
class View:
    """Everything the controls chose: what ``show_view`` draws."""

    dataset: Dataset
    runs: list[dict]  # one per panel
    feature_sets: list[FeatureSet]
    part: str  # key of PARTS
    rows: np.ndarray  # shape (n_points,): dataset rows on the maps, ascending
    method: str  # key of MAP_METHODS
    params: MapParams
    colouring: Colouring
    k: int  # neighbours shown for a single photo
    agreement: np.ndarray | None = None  # shape (n_points,): neighbour agreement of the two runs' features; 1 run: None
    agreement_k: int = DEFAULT_AGREEMENT_K  # neighbours compared per photo for ``agreement``
    disagree_below: float | None = None  # show only photos whose agreement is below this share; None: every photo


def _choose_runs(runs: list[dict]) -> tuple[str, list[dict], dict[int, dict]]:
    dataset_key, from_link = choose_dataset(runs, key="explorer_dataset")
    on_dataset = {run["id"]: run for run in runs if run["dataset_key"] == dataset_key}
    linked = [i for i in linked_run_ids() if i in on_dataset][:MAX_PANELS] if from_link else []
    chosen = st.multiselect(
        "Runs (one map each, side by side)",
        list(on_dataset),
        default=linked or [r["id"] for r in default_runs(list(on_dataset.values()))],
        format_func=lambda i: run_name(on_dataset[i]),
        max_selections=MAX_PANELS,
        key=f"explorer_runs_{dataset_key}",
    )
    st.caption(
        "Chosen by the link you opened."
        if linked
        else f"Chosen at first: {DEFAULT_RULE}, for the {MAX_PANELS} backbones trained last."
    )
    # The view in the URL, so a teammate opening the address sees the same maps.
    st.query_params["dataset"] = dataset_key
    st.query_params["runs"] = ",".join(str(i) for i in chosen)
    show_run_warnings([on_dataset[i] for i in chosen])
    return dataset_key, [on_dataset[i] for i in chosen], on_dataset


def _runs_to_show() -> tuple[Dataset, list[dict], dict[int, dict]] | None:
    """The dataset, the one or two runs to map and every run on that dataset.

    None after saying why there is nothing to show.
    """
    completed = list_runs(status="completed")
    runs = [run for run in completed if _file_stamp(_features_file(run))]
    if not runs:
        missing = len(completed) - len(runs)
        nothing_to_show(
            "No run with cached features yet. Train a head on the Train page (or the one-click comparison on Home): "
            "the features it extracts are what this page maps."
            + (f" ({missing} completed run(s) lost their cached features file.)" if missing else ""),
            ("pages/train.py", "Go to Train", ":material/model_training:"),
        )
        return None
    dataset_key, chosen, on_dataset = _choose_runs(runs)
    if not chosen:
        st.info("Choose one run, or two to compare their maps side by side.", icon=":material/info:")
        return None
    dataset = cached_dataset(dataset_key)
    stale = [run for run in chosen if run["dataset_fingerprint"] != dataset.fingerprint]
    if stale:
        ids = ", ".join(f"#{run['id']}" for run in stale)
        st.warning(
            markdown_text(
                f"The images of {dataset.name} changed since run(s) {ids} were trained, so their features no "
                "longer match the photos. Train again on the current images."
            ),
            icon=":material/warning:",
        )
    chosen = [run for run in chosen if run not in stale]
    return (dataset, chosen, on_dataset) if chosen else None


# The map settings' sliders, each greyed out while another method is chosen: MapParams field -> (the method it tunes,
# label, lowest, highest, start, step, widget key). A value has the type of its slider's numbers (int or float).
_MAP_SLIDERS = {
    "perplexity": ("tsne", "Perplexity (t-SNE)", 5, 100, 30, 5, "explorer_perplexity"),
    "n_neighbors": ("umap", "Neighbours (UMAP)", 2, 100, 15, 1, "explorer_neighbors"),
    "min_dist": ("umap", "Min distance (UMAP)", 0.0, 1.0, 0.1, 0.05, "explorer_min_dist"),
}
_MAP_SLIDER_HELP = {
    "perplexity": "Roughly how many neighbours each point keeps close; larger values show more global structure.",
    "n_neighbors": "UMAP's local neighbourhood: small values keep fine detail, large ones global layout.",
    "min_dist": "How tightly UMAP packs points of a cluster.",
}


def _method_controls(column) -> tuple[str, MapParams]:
    method = choose_map_method(
        column,
        key="explorer_method",
        help="t-SNE keeps neighbourhoods but distorts global distances; PCA is linear and instant; "
        "UMAP sits between and scales further.",
    )
    with column.popover("Map settings", icon=":material/tune:"):
        pca = st.toggle(
            f"PCA to {PCA_COMPONENTS} dims first",
            value=True,
            key="explorer_pca",
            disabled=method == "pca",
            help="Denoises the features and speeds up t-SNE and UMAP; turn off to map the raw features.",
        )
        settings = {
            field: st.slider(
                label,
                low,
                high,
                start,
                step=step,
                key=key,
                disabled=method != tunes,
                help=_MAP_SLIDER_HELP[field],
            )
            for field, (tunes, label, low, high, start, step, key) in _MAP_SLIDERS.items()
        }
    return method, MapParams(**settings, pca_components=PCA_COMPONENTS if pca else None)


def _colour_controls(
    column, dataset: Dataset, runs: list[dict], on_dataset: dict[int, dict], rows: np.ndarray
) -> Colouring:
    sources = [OWN_RUN] + [i for i in on_dataset]
    source = column.selectbox(
        "Predictions of",
        sources,
        key="explorer_colour_run",
        format_func=lambda i: "each map's own run" if i == OWN_RUN else run_name(on_dataset[i]),
        help="The run whose per-image test predictions colour the maps (any protocol); its test images carry them.",
    )
    colour_runs = [run if source == OWN_RUN else on_dataset[source] for run in runs]
    predictions = {run["id"]: _predictions(run) for run in {r["id"]: r for r in runs + colour_runs}.values()}
    scores = {
        score.key: score
        for run in {r["id"]: r for r in colour_runs}.values()
        for score in [confidence_score(run, predictions[run["id"]], len(dataset.image_paths))]
    }
    has_predictions = any(int(row) in predictions[run["id"]] for run in colour_runs for row in rows)
    modes = {"class": COLOUR_MODES["class"]}
    if has_predictions:
        modes |= {key: label for key, label in COLOUR_MODES.items() if key != "class"}
        modes |= {f"score:{key}": score.name for key, score in scores.items()}
    if len(runs) == 2:  # core.agreement: computed in choose_view, only when chosen (or for "only where they disagree")
        modes |= {AGREEMENT_MODE: "neighbour agreement of the two maps' features"}
    # Data-health scores (core.health.checks) of the first map's features: computed only once chosen (cached after).
    modes |= {HEALTH_MODE: f"data health: label quality and outlier scores ({runs[0]['backbone']})"}
    if st.session_state.get("explorer_colour") == HEALTH_MODE or str(
        st.session_state.get("explorer_colour")
    ).startswith("score:health:"):
        health = _health_scores(dataset, runs[0])  # None while a job computes them: the mode stays chosen till then
        scores |= {score.key: score for score in health or []}
        modes |= {f"score:{score.key}": score.name for score in health or []}
        if st.session_state.get("explorer_colour") == HEALTH_MODE and health is not None:  # ready: its first score
            st.session_state["explorer_colour"] = f"score:{health[0].key}" if health else "class"
    if st.session_state.get("explorer_colour") not in modes:  # e.g. "predicted" chosen, then train images
        st.session_state["explorer_colour"] = "class"
    colour = column.selectbox(
        "Colour by",
        list(modes),
        format_func=modes.get,
        key="explorer_colour",
        help="Predictions and scores need test images: runs predict only those.",
    )
    score = scores[colour.removeprefix("score:")] if colour.startswith("score:") else None
    if colour == HEALTH_MODE:  # its scores are still being computed (a job): the maps show the classes meanwhile
        colour = "class"
    return Colouring(by="score" if score else colour, runs=colour_runs, predictions=predictions, score=score)


def choose_view() -> View | None:
    """Draw what the maps show and the Explorer's inputs; return what they chose, or None after saying why there is
    nothing to map."""
    st.caption(
        "Each backbone's features of every photo, flattened to 2-D: photos the backbone finds alike sit together. "
        "Tight single-colour clusters mean features that separate the classes."
    )
    shown = _runs_to_show()
    if shown is None:
        return None
    dataset, runs, on_dataset = shown
    feature_sets = [_features(_features_file(run), _file_stamp(_features_file(run))) for run in runs]
    columns = st.columns([1, 1.2, 1.8, 0.8])
    part = columns[0].selectbox(
        "Images",
        list(PARTS),
        format_func=PARTS.get,
        key="explorer_part",
        help=f"Which images of split {runs[0]['split']} to map.",
    )
    part_rows = np.arange(len(dataset.image_paths)) if part == "all" else dataset.split(runs[0]["split"])[part]
    rows = common_rows(feature_sets, part_rows)
    method, params = _method_controls(columns[1])
    colouring = _colour_controls(columns[2], dataset, runs, on_dataset, rows)
    k = columns[3].number_input(
        "Neighbours (k)", 1, 32, 8, key="explorer_k", help="Nearest neighbours shown for a clicked photo."
    )
    if len(rows) < MIN_MAP_POINTS:
        st.info(
            f"Only {len(rows)} readable image(s) here: a map needs at least {MIN_MAP_POINTS}. Choose more images.",
            icon=":material/info:",
        )
        return None
    agreement, agreement_k, disagree_below = None, DEFAULT_AGREEMENT_K, None
    if len(runs) == 2:
        agreement_k, disagree_below = _agreement_controls(len(rows))
        if colouring.by == AGREEMENT_MODE or disagree_below is not None:
            agreement = _agreement(
                tuple(_features_file(run) for run in runs),
                tuple(_file_stamp(_features_file(run)) for run in runs),
                _rows_digest(rows),
                agreement_k,
                _features=tuple(feature_set.select(rows)[0] for feature_set in feature_sets),
            )
        if colouring.by == AGREEMENT_MODE:
            names = (f"#{runs[0]['id']}", f"#{runs[1]['id']}")
            score = agreement_score(agreement, rows, n_rows=len(dataset.image_paths), k=agreement_k, names=names)
            colouring = replace(colouring, by="score", score=score)
    return View(
        dataset=dataset,
        runs=runs,
        feature_sets=feature_sets,
        part=part,
        rows=rows,
        method=method,
        params=params,
        colouring=colouring,
        k=k,
        agreement=agreement,
        agreement_k=agreement_k,
        disagree_below=disagree_below,
    )


def _agreement_controls(n_points: int) -> tuple[int, float | None]:
    """The two maps' agreement inputs: neighbours compared per photo, and the "only where they disagree" share."""
    columns = st.columns([1.4, 1.6, 0.8, 1.2])
    only = columns[0].toggle(
        "Only where they disagree",
        key="explorer_disagree",
        help="Show only the photos whose nearest neighbours in the two runs' feature spaces have fewer than the "
        "chosen share in common; the maps keep their layout.",
    )
    below = columns[1].slider(
        "Neighbours in common fewer than",
        0.05,
        1.0,
        0.5,
        step=0.05,
        key="explorer_disagree_below",
        disabled=not only,
        format="%.2f",
        help="A share of the k nearest neighbours: 0.5 keeps the photos whose two neighbourhoods share under half.",
    )
    k = columns[2].number_input(
        "Agreement k",
        1,
        max(1, min(100, n_points - 1)),
        min(DEFAULT_AGREEMENT_K, n_points - 1),
        key="explorer_agreement_k",
        help="Nearest neighbours (cosine, full feature vectors) compared per photo: |kNN_A ∩ kNN_B| / k.",
    )
    return int(k), (float(below) if only else None)


@st.cache_resource(show_spinner="Neighbour agreement of the two runs' features…", max_entries=8)
def _agreement(
    paths: tuple[str, str], stamps: tuple, rows_digest: str, k: int, _features: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """``core.agreement.measures.neighbour_agreement`` of the two feature matrices; the key leaves the arrays out."""
    return neighbour_agreement(_features[0], _features[1], k=k)


# ----------------------------------------------------------------------------------------------- output


def build_panels(view: View, maps: list[FeatureMap]) -> list[Panel]:
    """One panel per run: its map's points, coloured as the view says, same class colours in every panel.

    With ``view.disagree_below`` only the photos whose two neighbourhoods agree less are drawn, where the whole
    map placed them (``shown_rows``).
    """
    dataset, keep, colouring = view.dataset, shown_mask(view), view.colouring
    rows = view.rows[keep]
    # The panels show the same photos: their classes, score and colour bar are the same in each.
    labels = dataset.labels[rows]
    score = colouring.score.values[rows] if colouring.score is not None else None
    bar = None
    if score is not None:
        low, high = colouring.score.bounds or score_range(score)
        bar = ColourBar(title=colouring.score.name, low=low, high=high)
    panels = []
    for run, feature_map, colour_run in zip(view.runs, maps, colouring.runs):
        traces = panel_traces(
            feature_map.embedding[keep],
            rows,
            labels=labels,
            predicted=predicted_classes(colouring.predictions[colour_run["id"]], rows),
            class_names=dataset.class_names,
            colour_by=colouring.by,
            score=score,
        )
        panels.append(Panel(title=f"{run_name(run)} · {feature_map.label}", colour_bar=bar, traces=traces))
    return panels


def shown_mask(view: View) -> np.ndarray:
    """Which of ``view.rows`` the maps draw: all, or with ``disagree_below`` those whose agreement is below it."""
    if view.disagree_below is None or view.agreement is None:
        return np.ones(len(view.rows), dtype=bool)
    return disagreeing(view.agreement, below=view.disagree_below)


def _photo_caption(dataset: Dataset, row: int) -> str:
    """Class, then file name on its own line (``photo_grid`` keeps the line break)."""
    return f"{dataset.class_names[dataset.labels[row]]}\n{dataset.image_paths[row].name}"


def _neighbours(view: View, row: int, features: list[np.ndarray]) -> None:
    dataset, rows = view.dataset, view.rows
    st.subheader("Nearest neighbours")
    name = f"{dataset.image_paths[row].name} ({dataset.class_names[dataset.labels[row]]})"
    st.caption(
        markdown_text(
            f"of {name}, by cosine distance between full feature vectors, among the {len(rows):,} images on the map"
        )
    )
    position = int(np.searchsorted(rows, row))
    for index, (column, run, matrix) in enumerate(zip(st.columns(len(view.runs)), view.runs, features)):
        # k + 1: the photo itself comes back too (distance 0), dropped below
        found, distances = cosine_neighbours(matrix, matrix[position : position + 1], k=view.k + 1)
        kept = [(int(rows[i]), float(d)) for i, d in zip(found[0], distances[0]) if i != position][: view.k]
        with column.container(key=f"explorer-neighbours-{index}"):
            st.markdown(f"**{markdown_text(run_name(run))}** · {matrix.shape[1]}-d features")
            photo_grid(
                [dataset.image_paths[r] for r, _ in kept],
                [f"{d:#.3g} · {_photo_caption(dataset, r)}" for r, d in kept],
                size=THUMB_PX,
            )


def _selection(event: dict | None, view_key: tuple) -> tuple[list[int], bool]:
    """The rows picked by the newest click or selection, and whether a box or lasso picked them (the maps then grey
    the rest); an event is acted on once, a new view starts empty."""
    if st.session_state.get(_VIEW_KEY) != view_key:
        st.session_state[_VIEW_KEY] = view_key
        st.session_state[_SELECTION_KEY] = []
        st.session_state[_SELECTION_KIND_KEY] = None
    if event is not None and event["event"] in ("click", "select") and event["seq"] != st.session_state.get(_SEQ_KEY):
        st.session_state[_SEQ_KEY] = event["seq"]
        st.session_state[_SELECTION_KEY] = event["rows"]
        st.session_state[_SELECTION_KIND_KEY] = event["event"]
    return st.session_state.get(_SELECTION_KEY, []), st.session_state.get(_SELECTION_KIND_KEY) == "select"


def _selection_tables(view: View, selected: list[int]) -> None:
    """Per-class summary of the selection, and its CSV exports (the summary, and one row per photo)."""
    dataset = view.dataset
    per_run = view.colouring.per_run
    summary = selection_summary(
        selected, labels=dataset.labels, class_names=dataset.class_names, on_map=view.rows, per_run=per_run
    )
    with st.container(key="explorer-selection-summary"):  # an HTML table: 17 rows need no data-grid scripts
        st.table(pd.DataFrame(summary).set_index("class").style.format(precision=1))
    runs = "; ".join(run_name(run) for run in {r["id"]: r for r in view.colouring.runs}.values())
    st.caption(
        markdown_text(
            f"Per class of the {len(selected)} selected photos. Right and wrong count the photos each run predicted "
            f"(its test images only): {runs}."
        )
    )
    parts = split_texts(dataset.split(view.runs[0]["split"]), len(dataset.image_paths))
    photos = []
    for row in selected:
        entry = {
            "file": relative_path(dataset, row),
            "class": dataset.class_names[dataset.labels[row]],
            f"part of split {view.runs[0]['split']}": parts[row],
        }
        for run_id, predictions in per_run.items():
            guess = predictions.get(row)
            entry[f"run #{run_id} predicted"] = None if guess is None else dataset.class_names[guess[0]]
            entry[f"run #{run_id} right"] = None if guess is None else guess[0] == dataset.labels[row]
        if view.agreement is not None:
            entry[f"neighbour agreement (k={view.agreement_k})"] = float(
                view.agreement[np.searchsorted(view.rows, row)]
            )
        photos.append(entry)
    downloads = (
        ("Download the summary (CSV)", summary, "selection-summary.csv", "explorer-summary-csv"),
        ("Download the selected photos (CSV)", photos, "selection-photos.csv", "explorer-photos-csv"),
    )
    for column, (label, table, file_name, key) in zip(st.columns(len(downloads)), downloads):
        column.download_button(label, csv_text(table), file_name=file_name, mime="text/csv", on_click="ignore", key=key)


def show_view(view: View) -> None:
    """Compute (or reuse) the maps, draw them with photo-on-hover, then the gallery of what a click or lasso picked."""
    dataset, rows = view.dataset, view.rows
    params, lowered = fit_map_params(view.method, view.params, len(rows))
    features = [feature_set.select(rows)[0] for feature_set in view.feature_sets]
    made = [_map_or_job(run, rows, view.method, params, matrix) for run, matrix in zip(view.runs, features)]
    pending = {work: job for _, work, job in made if job is not None}
    if pending:  # computed by jobs; this page draws the maps on the rerun after the last one ends
        _show_pending(pending)
        return
    maps = [feature_map for feature_map, _, _ in made]
    hover_text = HoverText(
        class_names=[dataset.class_names[label] for label in dataset.labels],
        file_names=[path.name for path in dataset.image_paths],
        predictions=prediction_texts(dataset.class_names, view.colouring.per_run, len(dataset.image_paths)),
        verdicts=verdict_texts(dataset.labels, view.colouring.per_run),
        splits=split_texts(dataset.split(view.runs[0]["split"]), len(dataset.image_paths)),
    )
    keep = shown_mask(view)
    on_map = set(rows[keep].tolist())
    view_key = (dataset.key, tuple(run["id"] for run in view.runs), view.part, view.disagree_below)
    # Read before drawing the maps, so that they mark what this rerun's click or selection picked: a click is ringed,
    # a box or lasso drawn in Plotly's selected style with the rest greyed, on every map.
    picked, dim = _selection(last_event(MAP_KEY), view_key)
    selected = [row for row in picked if row in on_map]
    hover_scatter(
        build_panels(view, maps),
        hover_text=hover_text,
        thumbnails=_thumbnails(dataset),
        height=560,
        selected_rows=selected,
        dim_unselected=dim,
        key=MAP_KEY,
    )
    if view.disagree_below is not None:
        st.caption(
            f"Only where they disagree: {int(keep.sum()):,} of {len(rows):,} photos share fewer than "
            f"{view.disagree_below:.0%} of their {view.agreement_k} nearest neighbours (cosine) in the two runs' "
            "feature spaces (core.agreement.measures.neighbour_agreement); each is drawn where the whole map placed it."
        )
    st.caption(
        f"{len(rows):,} images · {MAP_METHODS[view.method]} of the cached features, "
        f"{params.describe(view.method)}{lowered}. "
        "Hover a point for its photo; click one, or box/lasso-select several (tools beside the first map's title), "
        "for a gallery, a per-class summary and a CSV (a box or lasso greys the other photos on every map); "
        "click a legend entry to hide a class, double-click to show only it."
    )
    if selected:
        st.subheader(f"Selected photos ({len(selected)})")
        _selection_tables(view, selected)  # first: what a lasso caught, at a glance, before its photos
        shown = selected[:GALLERY_LIMIT]
        photo_grid(
            [dataset.image_paths[row] for row in shown], [_photo_caption(dataset, row) for row in shown], size=THUMB_PX
        )
        if len(selected) > GALLERY_LIMIT:
            st.caption(f"Showing the first {GALLERY_LIMIT} of {len(selected)}.")
        if len(selected) == 1:
            _neighbours(view, selected[0], features)
