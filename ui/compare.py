"""The Compare page's parts: run choice, the runs table, summaries, protocols table, few-shot curves, paired
comparison, confusion matrices with a cell gallery, per-class accuracy, misclassified photos, CSV downloads.

Frames and sentences are built by pure functions (tested without a page); the ``show_*`` functions draw
them. Runs are named by ``run_name`` everywhere on the page: the same backbone with two weights (pretrained
and random, or two checkpoint files), protocols and feature variants never read alike. Few-shot runs (a
probe suite makes a hundred per backbone) stay out of the run list and feed the few-shot curves instead.
Every export goes through ``core.base.csv_export.csv_text`` (formula-safe cells, ISO timestamps).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.backbones.variants import default_variant
from core.base.csv_export import csv_text, iso_time
from core.base.text import markdown_text
from core.probing.pretraining import pretraining_sentence
from core.probing.probes import ALL_PROTOCOLS
from core.probing.stats import comparison_sentence, paired_comparison
from core.probing.suite import fewshot_points
from core.probing.summary import summarise_runs
from core.runs.naming import protocol_name, run_name, weights_name
from core.runs.sanity import DEFAULT_RULE_PER_SPLIT
from core.runs.sanity import default_runs as sanity_default_runs
from ui import choose, lanes
from ui.charts import confusion_figure, curves_figure, fewshot_figure, per_class_figure
from ui.labels import dataset_label, head_label
from ui.state import (
    registry,
    registry_stamp,
    run_epochs,
    run_predictions,
    show_run_warnings,
    user_errors,
    warnings_of,
    workspace,
)
from ui.widgets import choose_dataset, linked_run_ids, photo_grid

THUMB_PX = 112
GALLERY_LIMIT = 24  # photos per gallery; the full list is in the table and the CSV
MATRICES_PER_ROW = 2  # wide enough for 17 readable class names
GALLERY_ANCHOR = "cell-gallery"
# The page's parts, shown as the user picks them. It opens on the tables and text only: each chart is a Plotly
# figure, and five of them with their galleries kept a new tab busy for 3.1 s in Chromium on an idle 2-core machine
# (python -m bench --only browser), where the overview alone settles in about a third of that.
VIEWS = (
    "Overview",
    "Accuracy vs cost",
    "Calibration",
    "Few-shot curves",
    "Training curves",
    "Confusion matrices",
    "Per-class accuracy",
    "Misclassified",
    "Agreement",
    "Layer-wise",
)
DEFAULT_VIEWS = ("Overview",)
VIEWS_KEY = "compare_views"
# The runs table's visible columns (the CSV has them all): they fit a wide page at 1,400 px (looked at in Chromium;
# with head, split and seed too it scrolled). The split and a standardised head show in the run's name.
SHOWN_COLUMNS = [
    "name",
    "test acc %",
    "95 % CI low",
    "95 % CI high",
    "top-5 %",
    "test loss",
    "chosen",
    "ECE %",
    "ms / image",
    "finished",
]


# ----------------------------------------------------------------------------------------------- reads


@st.cache_data(show_spinner=False, max_entries=8)
def _completed(path: str, stamp: tuple, few_shot: bool) -> list[dict]:
    return registry().list_runs(status="completed", few_shot=few_shot, limit=100_000)


def completed_runs(*, few_shot: bool = False) -> list[dict]:
    """Completed runs on the whole training part (or only few-shot runs), newest first.

    Re-read after a registry write.
    """
    return _completed(str(registry().path), registry_stamp(), few_shot)


# ----------------------------------------------------------------------------------------------- names


def _reference(run: dict) -> bool:
    return run["protocol"] == "mlp" and run["features"] == default_variant(run["backbone"])


def default_runs(runs: list[dict]) -> list[dict]:
    """``core.runs.sanity.DEFAULT_RULE_PER_SPLIT``: the best on validation per backbone, weights and split.

    Layer-wise runs (features ``layer:<block>``, the Layer-wise view's points) are left out while other runs exist:
    an inner block is a point on a depth curve, not the backbone's headline feature.
    """
    headline = [r for r in runs if not str(r.get("features", "")).startswith(lanes.LAYER_PREFIX)]
    return sanity_default_runs(headline or runs, per_split=True)


# ----------------------------------------------------------------------------------------------- frames


def _interval(run: dict) -> tuple[float, float] | None:
    metrics = run.get("metrics") or {}
    return tuple(metrics["test_acc_ci"]) if "test_acc_ci" in metrics else None


def _chosen(run: dict) -> str:
    hyperparameter = (run.get("metrics") or {}).get("hyperparameter")
    if not hyperparameter:
        return f"epoch {run['best_epoch']}" if run["best_epoch"] else ""
    if hyperparameter["name"] is None:
        return ""
    # One value (an lr, a k, a C) or one per name (attentive: "lr, weight decay" -> [0.003, 0.0005]).
    values = hyperparameter["value"] if isinstance(hyperparameter["value"], list) else [hyperparameter["value"]]
    return f"{hyperparameter['name']} {', '.join(f'{value:g}' for value in values)}"


def _rounded(value: float | None, digits: int) -> float | None:
    # Accuracies are stored as float32-derived doubles (97.64705657958984): a CSV shows what the test can resolve.
    return None if value is None else round(float(value), digits)


def runs_table(runs: list[dict]) -> pd.DataFrame:
    """One row per run: what it was, its test metrics with the 95 % interval, timings; plain values for the CSV."""
    intervals = [_interval(r) for r in runs]
    metrics = [r.get("metrics") or {} for r in runs]
    return pd.DataFrame(
        {
            "run": [r["id"] for r in runs],
            "name": [run_name(r) for r in runs],
            "backbone": [r["backbone"] for r in runs],
            "weights": [weights_name(r["weights"]) for r in runs],
            "features": [r["features"] for r in runs],
            "protocol": [r["protocol"] for r in runs],
            "dataset": [dataset_label(r["dataset_name"], r["synthetic"]) for r in runs],
            "split": [r["split"] for r in runs],
            "test acc %": [_rounded(r["test_acc"], 2) for r in runs],
            # Two numeric columns (a CSV reader gets numbers, not "3.5 to 8.5" text).
            "95 % CI low": [_rounded(i[0], 2) if i else None for i in intervals],
            "95 % CI high": [_rounded(i[1], 2) if i else None for i in intervals],
            "top-5 %": [_rounded(m.get("top5"), 2) for m in metrics],
            "mean per-class %": [_rounded(m.get("mean_class_acc"), 2) for m in metrics],
            "test loss": [_rounded(r["test_loss"], 4) for r in runs],
            "warning": ["; ".join(warnings_of(r)) for r in runs],
            "chosen": [_chosen(r) for r in runs],
            "best epoch": [r["best_epoch"] for r in runs],
            "features s": [_rounded(r["timings"]["features_s"], 2) for r in runs],
            "features cached": [bool(r["timings"].get("features_cached")) for r in runs],
            "train s": [_rounded(r["timings"]["train_s"], 2) for r in runs],
            "device": [r["device"] for r in runs],
            "precision": [r["precision"] for r in runs],
            "head": [head_label(r["config"]["head"]) for r in runs],
            "epochs": [r["config"]["head"].get("epochs") for r in runs],
            "seed": [r["seed"] for r in runs],
            "skipped files": [len(r["skipped"] or []) for r in runs],
            "finished": [iso_time(r["finished_at"]) for r in runs],
            # What the backbone costs on this machine (core.cost) and how calibrated the run is (ui.choose).
            **choose.cost_columns(runs, choose.costs()),
        }
    )


def split_summary(runs: list[dict]) -> pd.DataFrame:
    """Mean and sample std of test metrics per experiment over its runs (``core.probing.summary``, as the CLI
    groups)."""
    summaries = summarise_runs(runs)
    return pd.DataFrame(
        {
            "backbone": [s.first["backbone"] for s in summaries],
            "weights": [weights_name(s.first["weights"]) for s in summaries],
            "features": [s.first["features"] for s in summaries],
            "protocol": [s.first["protocol"] for s in summaries],
            "head": [head_label(s.first["config"]["head"]) for s in summaries],
            "splits": [", ".join(sorted(set(s.splits))) for s in summaries],
            "runs": [len(s.runs) for s in summaries],
            "test acc % mean": [s.acc_mean for s in summaries],
            "test acc % std": [s.acc_std for s in summaries],
            "test loss mean": [s.loss_mean for s in summaries],
            "test loss std": [s.loss_std for s in summaries],
        }
    )


def protocols_frame(runs: list[dict]) -> pd.DataFrame:
    """Rows backbone (weights) x feature variant, columns protocols: test top-1 % with its 95 % interval.

    Several runs of one cell (other splits or repeats) show their mean ± std and how many there are.
    """
    rows: dict[tuple, dict] = {}
    protocols: list[str] = []
    for summary in summarise_runs(runs):
        run = summary.first
        if run["protocol"] not in protocols:
            protocols.append(run["protocol"])
        interval = _interval(run)
        if len(summary.runs) > 1:
            cell = f"{summary.acc_mean:.1f} ± {summary.acc_std:.1f} ({len(summary.runs)} runs)"
        else:
            cell = (
                f"{run['test_acc']:.1f} ({interval[0]:.1f} to {interval[1]:.1f})"
                if interval
                else f"{run['test_acc']:.1f}"
            )
        row = rows.setdefault(
            (run["backbone"], run["weights"], run["features"]),
            {"backbone": run["backbone"], "weights": weights_name(run["weights"]), "features": run["features"]},
        )
        row[run["protocol"]] = cell
    frame = pd.DataFrame(list(rows.values()))
    return frame.reindex(
        columns=["backbone", "weights", "features", *(p for p in ALL_PROTOCOLS if p in protocols)]
    ).fillna("")


def fewshot_plot_points(few_shot: list[dict], full: list[dict]) -> list[dict]:
    """Points of the few-shot plot: each few-shot level, and the whole training part of the same experiments
    placed at its images per class. ``x`` is images per class, ``label`` names backbone, weights, variant, protocol."""
    curves = {(r["backbone"], r["weights"], r["features"], r["protocol"]) for r in few_shot}
    # The suite's own runs on the whole training part (they record how many training images they had).
    ends = [
        r
        for r in full
        if (r["backbone"], r["weights"], r["features"], r["protocol"]) in curves and "train_images" in r["config"]
    ]
    points = []
    for point in fewshot_points(few_shot + ends):
        classes = len((few_shot + ends)[0]["class_names"])
        x = point["shots"] if point["shots"] is not None else point["train_images"] / classes
        label = (
            f"{point['backbone']} · {weights_name(point['weights'])} · {point['features']} · "
            f"{protocol_name(point['protocol'])}"
        )
        colour_key = (point["backbone"], point["weights"])  # colour by backbone and weights, dash by protocol
        points.append({**point, "label": label, "x": x, "colour_key": colour_key})
    return points


def predictions_frame(run: dict, predictions: pd.DataFrame) -> pd.DataFrame:
    names = run["class_names"]
    return pd.DataFrame(
        {
            "run": run["id"],
            "backbone": run["backbone"],
            "weights": weights_name(run["weights"]),
            "features": run["features"],
            "protocol": run["protocol"],
            "split": run["split"],
            "row": predictions["row"],
            "file": predictions["path"],
            "true class": [names[i] for i in predictions["label"]],
            "predicted class": [names[i] for i in predictions["predicted"]],
            "confidence": predictions["confidence"],
            "correct": predictions["label"] == predictions["predicted"],
            "true index": predictions["label"],
            "predicted index": predictions["predicted"],
        }
    )


def paired_text(run_a: dict, run_b: dict, frame_a: pd.DataFrame, frame_b: pd.DataFrame) -> str:
    """The paired comparison in words, or why there is none (the runs were scored on different test images)."""
    if run_a["id"] == run_b["id"]:
        return "Choose two different runs."
    a, b = frame_a.set_index("row"), frame_b.set_index("row")
    if run_a["dataset_fingerprint"] != run_b["dataset_fingerprint"] or set(a.index) != set(b.index):
        return (
            "These two runs were not scored on the same test images (another split or dataset version), "
            "so they cannot be paired."
        )
    comparison = paired_comparison(a["correct"].to_numpy(), b.loc[a.index, "correct"].to_numpy())
    return comparison_sentence(comparison, name_a=run_name(run_a), name_b=run_name(run_b)) + "."


def most_confused_cell(confusion: np.ndarray) -> tuple[int, int]:
    """The off-diagonal (true, predicted) cell with the most images; the first diagonal cell if none is wrong."""
    off = np.array(confusion, dtype=float)
    np.fill_diagonal(off, -1)
    true, predicted = np.unravel_index(int(off.argmax()), off.shape)
    return (int(true), int(predicted)) if off[true, predicted] > 0 else (0, 0)


# ----------------------------------------------------------------------------------------------- drawing


def choose_runs(completed: list[dict]) -> tuple[str, list[dict]] | None:
    """Dataset and runs pickers (``?dataset=<key>`` preselects one); returns (dataset key, chosen runs) or None."""
    dataset_key, from_link = choose_dataset(completed, key="compare_dataset")
    runs = {run["id"]: run for run in completed if run["dataset_key"] == dataset_key}
    linked = [i for i in linked_run_ids() if i in runs] if from_link else []
    chosen_ids = st.multiselect(
        "Runs",
        list(runs),
        default=linked or [run["id"] for run in default_runs(list(runs.values()))],
        key=f"compare_runs_{dataset_key}",
        format_func=lambda i: f"{run_name(runs[i])} · {iso_time(runs[i]['finished_at'])}",
        help="Runs on the whole training part; few-shot runs are summarised in the few-shot curves below.",
    )
    st.caption("Chosen by the link you opened." if linked else f"Chosen at first: {DEFAULT_RULE_PER_SPLIT}.")
    # The view in the URL, so a teammate opening the address sees the same dataset and runs.
    st.query_params["dataset"] = dataset_key
    st.query_params["runs"] = ",".join(str(i) for i in chosen_ids)
    if not chosen_ids:
        st.info("Choose at least one run.", icon=":material/info:")
        return None
    return dataset_key, [runs[i] for i in chosen_ids]


def show_answer(full: list[dict], chosen: list[dict]) -> None:
    """The pretraining answer in one sentence (when runs pair pretrained and random weights), and each chosen run's
    warnings (one class predicted, collapsed features) with their cause and fix."""
    sentence = pretraining_sentence(full)
    if sentence:
        st.markdown(f"**How much does pretraining matter?** {markdown_text(sentence)}")
    show_run_warnings(chosen)


def manage_runs(runs: list[dict]) -> None:
    """Rename, tag or delete the chosen runs (deleting asks to confirm; it removes heads and predictions, keeps the
    feature caches)."""
    with st.expander("Rename, tag or delete runs", icon=":material/edit:"):
        by_id = {run["id"]: run for run in runs}
        run_id = st.selectbox("Run", list(by_id), format_func=lambda i: run_name(by_id[i]), key="manage_run")
        run = by_id[run_id]
        with st.form(f"manage-{run_id}", border=False):
            title = st.text_input("Name", value=run.get("title") or "", max_chars=200, placeholder="(none)")
            tags = st.text_input("Tags (comma-separated)", value=", ".join(run.get("tags") or []), max_chars=300)
            if st.form_submit_button("Save name and tags", icon=":material/save:"):
                with user_errors():
                    registry().rename_run(run_id, title=title)
                    registry().set_tags(run_id, tags=tags.split(","))
                    st.session_state["manage_message"] = f"Saved run #{run_id}."
                    st.rerun()
        confirm = st.checkbox(
            f"Yes, delete run #{run_id}: its head file and predictions go; the cached features stay for other runs",
            key=f"manage-confirm-{run_id}",
        )
        if st.button("Delete run", icon=":material/delete:", disabled=not confirm, key=f"manage-delete-{run_id}"):
            with user_errors():
                registry().delete_runs([run_id], workspace_root=workspace().root)
                st.session_state["manage_message"] = f"Deleted run #{run_id}."
                st.rerun()
        message = st.session_state.pop("manage_message", None)
        if message:
            st.success(message, icon=":material/check_circle:")


def show_runs_table(table: pd.DataFrame, runs: list[dict]) -> None:
    number = st.column_config.NumberColumn
    st.dataframe(
        table,
        hide_index=True,
        column_order=SHOWN_COLUMNS,
        column_config={
            "name": st.column_config.TextColumn(width="large"),
            "test acc %": number(format="%.1f"),
            "top-5 %": number(format="%.1f"),
            "test loss": number(format="%.4f"),
            "ECE %": number(format="%.1f", help="expected calibration error on the test part, as trained (15 bins)"),
            "ms / image": number(
                format="%.1f", help="the backbone's model-only time per image on this machine (python -m core cost)"
            ),
        },
    )
    summary = split_summary(runs)
    if (summary["runs"] > 1).any():
        st.markdown(
            "**Mean and std per experiment** (sample std over its chosen runs: the splits, or repeats with other seeds)"
        )
        st.dataframe(
            summary,
            hide_index=True,
            column_config={c: number(format="%.2f") for c in summary.columns if "mean" in c or "std" in c},
        )


def choose_views() -> set[str]:
    """The parts of the page to show (``VIEWS``), from a multi-choice control above them."""
    linked = [view for view in st.query_params.get("view", "").split(",") if view in VIEWS]
    chosen = st.segmented_control(
        "Show",
        VIEWS,
        default=linked or list(DEFAULT_VIEWS),
        selection_mode="multi",
        key=VIEWS_KEY,
        label_visibility="collapsed",
    )
    st.query_params["view"] = ",".join(chosen or ())
    if not chosen:
        st.caption("Choose above what to show.")
    return set(chosen or ())


def show_downloads(table: pd.DataFrame, predictions: dict[int, pd.DataFrame]) -> None:
    downloads = st.container(horizontal=True)
    downloads.download_button(
        "Table as CSV",
        data=csv_text(table),
        file_name="flower-probe-runs.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
    )
    downloads.download_button(
        "Per-image predictions as CSV",
        data=lambda: csv_text(pd.concat(predictions.values())),
        file_name="flower-probe-predictions.csv",
        mime="text/csv",
        on_click="ignore",
        icon=":material/download:",
    )


def show_skipped(runs: list[dict]) -> None:
    for run in runs:
        if run["skipped"]:
            with st.expander(
                f"{markdown_text(run_name(run))} skipped {len(run['skipped'])} unreadable file(s)",
                icon=":material/broken_image:",
            ):
                st.dataframe(pd.DataFrame(run["skipped"], columns=["file", "reason"]), hide_index=True)


def show_protocols(full: list[dict]) -> None:
    """The protocols table over every completed full run of the dataset."""
    if len({r["protocol"] for r in full}) < 2 and all(_reference(r) for r in full):
        return  # only reference runs: the runs table says it all
    st.subheader("Protocols")
    st.caption(
        "Test top-1 % on the whole training part, with its 95 % bootstrap interval over test images; each probe's "
        "hyperparameter was chosen on the validation part. Every completed run of this dataset."
    )
    st.dataframe(protocols_frame(full), hide_index=True)


def show_fewshot(few_shot: list[dict], full: list[dict]) -> None:
    st.subheader("Few-shot curves")
    if not few_shot:
        st.caption("No few-shot runs on this dataset yet: a probe suite with shot levels (Train page) makes them.")
        return
    st.caption(
        "Test accuracy against labelled training images per class, mean over the random draws with a ± 1 std band; "
        "the validation part stays whole at every level. The last point of each line is the whole training part."
    )
    lines = lanes.zero_shot_lines(few_shot)  # zero-shot runs (0 labelled images): a horizontal line each
    curves = [run for run in few_shot if run["protocol"] != "zeroshot"]
    points = fewshot_plot_points(curves, full) if curves else []
    figure = fewshot_figure(points, n_classes=len(few_shot[0]["class_names"]))
    lanes.add_zero_shot_lines(figure, lines, list(dict.fromkeys(p["colour_key"] for p in points)))
    st.plotly_chart(figure, config={"displayModeBar": False})
    for sentence in lanes.crossing_text(points, lines):
        st.markdown(markdown_text(sentence))


def show_paired(runs: list[dict], predictions: dict[int, pd.DataFrame]) -> None:
    if len(runs) < 2:
        return
    st.subheader("Paired comparison")
    columns = st.columns(2)
    by_id = {run["id"]: run for run in runs}
    ids = list(by_id)
    a = columns[0].selectbox("Run A", ids, index=0, format_func=lambda i: run_name(by_id[i]), key="paired_a")
    b = columns[1].selectbox("Run B", ids, index=1, format_func=lambda i: run_name(by_id[i]), key="paired_b")
    sentence = paired_text(by_id[a], by_id[b], predictions[a], predictions[b])
    if "cannot be paired" not in sentence and a != b:
        sentence += choose.speed_clause(by_id[a], by_id[b], choose.costs())
    st.markdown(markdown_text(sentence))
    st.caption(
        "On the same test images: the accuracy difference with a 95 % paired-bootstrap interval, "
        "and McNemar's exact test on the images exactly one of the two runs got right."
    )


def show_curves(runs: list[dict]) -> None:
    trained = [run for run in runs if run["protocol"] == "mlp"]  # the others have no epochs
    st.subheader("Training curves")
    if not trained:
        st.caption("Only the reference head trains for epochs; none of the chosen runs is one.")
        return
    curves = {run_name(run): run_epochs(run) for run in trained}
    st.plotly_chart(curves_figure(curves, n_classes=len(trained[0]["class_names"])), config={"displayModeBar": False})


def select_cell(run_id: int, chart_key: str) -> None:
    """A click on a confusion matrix cell sets the cell gallery's run and classes (scatter x = predicted, y = true)."""
    points = st.session_state[chart_key]["selection"]["points"]
    if points:
        st.session_state["cell_run"] = run_id
        st.session_state["cell_true"] = int(points[0]["y"])
        st.session_state["cell_predicted"] = int(points[0]["x"])
        st.session_state["cell_scroll"] = True


def gallery(frame: pd.DataFrame, captions: list[str]) -> None:
    """Thumbnails of the first GALLERY_LIMIT rows of a predictions frame, with plain-text captions."""
    shown = frame.head(GALLERY_LIMIT)
    photo_grid(list(shown["file"]), captions[:GALLERY_LIMIT], size=THUMB_PX)
    if len(frame) > GALLERY_LIMIT:
        st.caption(f"Showing {GALLERY_LIMIT} of {len(frame)}; the predictions CSV lists every test photo.")


def show_confusions(runs: list[dict], predictions: dict[int, pd.DataFrame]) -> None:
    st.subheader("Confusion matrices")
    st.caption(
        "Rows: true class; columns: predicted class; colour: share of the true class. "
        "Click a cell to see its test photos below."
    )
    for start in range(0, len(runs), MATRICES_PER_ROW):
        for column, run in zip(st.columns(MATRICES_PER_ROW), runs[start : start + MATRICES_PER_ROW]):
            chart_key = f"confusion-{run['id']}"
            column.plotly_chart(
                confusion_figure(
                    confusion=np.array(run["confusion"]), class_names=run["class_names"], title=run_name(run)
                ),
                key=chart_key,
                on_select=partial(select_cell, run["id"], chart_key),
                selection_mode="points",
                config={"displayModeBar": False},
            )
    show_cell_gallery(runs, predictions)


def show_cell_gallery(runs: list[dict], predictions: dict[int, pd.DataFrame]) -> None:
    """The photos of one confusion cell; scrolled into view when a click on a matrix opened it."""
    by_id = {run["id"]: run for run in runs}
    st.markdown("**Test photos in one cell**")
    st.html(f'<div id="{GALLERY_ANCHOR}"></div>')
    if st.session_state.get("cell_run") not in by_id:
        st.session_state["cell_run"] = runs[0]["id"]
        st.session_state["cell_true"], st.session_state["cell_predicted"] = most_confused_cell(runs[0]["confusion"])
    columns = st.columns(3)
    cell_run = by_id[columns[0].selectbox("Run", list(by_id), format_func=lambda i: run_name(by_id[i]), key="cell_run")]
    class_names = cell_run["class_names"]
    for key in ("cell_true", "cell_predicted"):
        if st.session_state.get(key) not in range(len(class_names)):
            st.session_state[key] = 0
    true_class = columns[1].selectbox(
        "True class", range(len(class_names)), format_func=class_names.__getitem__, key="cell_true"
    )
    predicted_class = columns[2].selectbox(
        "Predicted class", range(len(class_names)), format_func=class_names.__getitem__, key="cell_predicted"
    )
    frame = predictions[cell_run["id"]]
    cell = frame[(frame["true index"] == true_class) & (frame["predicted index"] == predicted_class)].sort_values(
        "confidence", ascending=False
    )
    if cell.empty:
        st.caption("No test photo in this cell.")
    else:
        gallery(
            cell,
            [f"{confidence:.0%} · {Path(file).name}" for file, confidence in zip(cell["file"], cell["confidence"])],
        )
    if st.session_state.pop("cell_scroll", False):
        # A constant script (no user text): bring the gallery the click just filled into view, below the matrices.
        script = f'document.getElementById("{GALLERY_ANCHOR}")?.scrollIntoView({{behavior: "smooth", block: "start"}});'
        st.html(f"<script>{script}</script>", unsafe_allow_javascript=True)


def show_per_class(runs: list[dict]) -> None:
    st.subheader("Per-class accuracy")
    first_classes = runs[0]["class_names"]
    same_classes = [run for run in runs if run["class_names"] == first_classes]
    st.plotly_chart(
        per_class_figure(
            class_names=first_classes, accuracies={run_name(run): run["per_class_acc"] for run in same_classes}
        ),
        config={"displayModeBar": False},
    )
    with st.expander("As a table"):
        st.dataframe(
            pd.DataFrame({"class": first_classes, **{run_name(run): run["per_class_acc"] for run in same_classes}}),
            hide_index=True,
        )
    if len(same_classes) < len(runs):
        st.caption("Runs made when the dataset had other classes are left out of this chart.")


def show_misclassified(runs: list[dict], predictions: dict[int, pd.DataFrame]) -> None:
    st.subheader("Misclassified test photos")
    for tab, run in zip(st.tabs([run_name(run) for run in runs]), runs):
        with tab:
            frame = predictions[run["id"]]
            wrong = frame[~frame["correct"]].sort_values("confidence", ascending=False)
            st.caption(f"{len(wrong)} of {len(frame)} test photos misclassified, most confident mistakes first.")
            if not wrong.empty:
                gallery(
                    wrong,
                    [
                        f"{true} → {predicted} ({confidence:.0%})"
                        for true, predicted, confidence in zip(
                            wrong["true class"], wrong["predicted class"], wrong["confidence"]
                        )
                    ],
                )
                with st.expander("As a table"):
                    st.dataframe(
                        wrong[["file", "true class", "predicted class", "confidence"]],
                        hide_index=True,
                        column_config={"confidence": st.column_config.NumberColumn(format="percent")},
                    )


def load_predictions(runs: list[dict]) -> dict[int, pd.DataFrame]:
    """Each run's per-image test predictions, as ``predictions_frame``."""
    return {run["id"]: predictions_frame(run, run_predictions(run)) for run in runs}
