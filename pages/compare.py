"""Compare: completed runs side by side.

Pick a dataset (``?dataset=<key>`` preselects one) and runs (by default the latest run per backbone,
weights and split on the dataset of the newest run), then: a table of test metrics and timings (mean
and std where a backbone has several runs, e.g. the three Oxford 17 splits), training curves overlaid,
confusion matrices whose cells open a gallery of those test photos, per-class accuracy, the
misclassified photos, unreadable files a run skipped, and CSV downloads.
"""

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ui.auth import require_access
from ui.charts import confusion_figure, curves_figure, per_class_figure
from ui.common import (
    dataset_label, format_age, head_label, list_runs, md, run_epochs, run_label, run_predictions, thumbnail, weights_label,
)

require_access()  # first: no Streamlit mode runs this page past the access gate

THUMB_PX = 112
GALLERY_LIMIT = 24  # photos per gallery; the full list is in the table and the CSV
MATRICES_PER_ROW = 2  # wide enough for 17 readable class names


def default_runs(runs: list[dict]) -> list[dict]:
    """The newest run of each (backbone, weights, split); ``runs`` newest first."""
    latest: dict[tuple, dict] = {}
    for run in runs:
        latest.setdefault((run["backbone"], run["weights"], run["split"]), run)
    return list(latest.values())


def runs_table(runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame({
        "run": [r["id"] for r in runs],
        "backbone": [r["backbone"] for r in runs],
        "weights": [weights_label(r["weights"]) for r in runs],
        "dataset": [dataset_label(r["dataset_name"], r["synthetic"]) for r in runs],
        "split": [r["split"] for r in runs],
        "best epoch": [r["best_epoch"] for r in runs],
        "test acc %": [r["test_acc"] for r in runs],
        "test loss": [r["test_loss"] for r in runs],
        "features s": [r["timings"]["features_s"] for r in runs],
        "features cached": [bool(r["timings"].get("features_cached")) for r in runs],
        "train s": [r["timings"]["train_s"] for r in runs],
        "device": [r["device"] for r in runs],
        "precision": [r["precision"] for r in runs],
        "head": [head_label(r["config"]["head"]) for r in runs],
        "epochs": [r["config"]["head"]["epochs"] for r in runs],
        "seed": [r["seed"] for r in runs],
        "skipped files": [len(r["skipped"] or []) for r in runs],
        "finished": [format_age(r["finished_at"]) for r in runs],
    })


def split_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1, as the CLI prints) of test metrics per backbone, weights and head over its splits."""
    grouped = table.groupby(["backbone", "weights", "head"], sort=False)
    summary = grouped.agg(
        splits=("split", lambda s: ", ".join(sorted(s))), runs=("run", "size"),
        acc_mean=("test acc %", "mean"), acc_std=("test acc %", "std"), loss_mean=("test loss", "mean"), loss_std=("test loss", "std"),
    ).reset_index()
    return summary.rename(columns={"acc_mean": "test acc % mean", "acc_std": "test acc % std", "loss_mean": "test loss mean", "loss_std": "test loss std"})


def most_confused_cell(confusion: np.ndarray) -> tuple[int, int]:
    """The off-diagonal (true, predicted) cell with the most images; the first diagonal cell if none is wrong."""
    off = np.array(confusion, dtype=float)
    np.fill_diagonal(off, -1)
    true, predicted = np.unravel_index(int(off.argmax()), off.shape)
    return (int(true), int(predicted)) if off[true, predicted] > 0 else (0, 0)


def select_cell(run_id: int, chart_key: str) -> None:
    """A click on a confusion matrix cell sets the cell gallery's run and classes (scatter x = predicted, y = true)."""
    points = st.session_state[chart_key]["selection"]["points"]
    if points:
        st.session_state["cell_run"] = run_id
        st.session_state["cell_true"] = int(points[0]["y"])
        st.session_state["cell_predicted"] = int(points[0]["x"])


def gallery(frame: pd.DataFrame, captions: list[str]) -> None:
    """Thumbnails of the first GALLERY_LIMIT rows of a predictions frame, with plain-text captions."""
    shown = frame.head(GALLERY_LIMIT)
    thumbs = [thumbnail(path, size=THUMB_PX) for path in shown["file"]]
    st.image([data for data, _ in thumbs], width=THUMB_PX, output_format="JPEG",
             caption=[md(text + ("" if ok else " (unreadable)")) for text, (_, ok) in zip(captions, thumbs)])
    if len(frame) > GALLERY_LIMIT:
        st.caption(f"Showing {GALLERY_LIMIT} of {len(frame)}; the predictions CSV lists every test photo.")


def predictions_frame(run: dict, predictions: pd.DataFrame) -> pd.DataFrame:
    names = run["class_names"]
    return pd.DataFrame({
        "run": run["id"], "backbone": run["backbone"], "weights": weights_label(run["weights"]), "split": run["split"],
        "file": predictions["path"], "true class": [names[i] for i in predictions["label"]],
        "predicted class": [names[i] for i in predictions["predicted"]], "confidence": predictions["confidence"],
        "correct": predictions["label"] == predictions["predicted"], "true index": predictions["label"], "predicted index": predictions["predicted"],
    })


st.title(":material/compare_arrows: Compare")
completed = list_runs(status="completed")
if not completed:
    st.info(
        "No completed runs yet. Launch a comparison on the Train page, or the one-click comparison on Home; "
        "runs appear here as they finish.",
        icon=":material/info:",
    )
    st.page_link("pages/train.py", label="Train", icon=":material/model_training:")
    st.page_link("pages/home.py", label="Home", icon=":material/home:")
    st.stop()

datasets: dict[str, str] = {}
for run in completed:  # newest first, so the default dataset is that of the newest run
    datasets.setdefault(run["dataset_key"], dataset_label(run["dataset_name"], run["synthetic"]))
requested = st.query_params.get("dataset")
dataset_key = st.selectbox("Dataset", list(datasets), index=list(datasets).index(requested) if requested in datasets else 0,
                           format_func=datasets.get, key="compare_dataset")
runs = {run["id"]: run for run in completed if run["dataset_key"] == dataset_key}
chosen_ids = st.multiselect(
    "Runs", list(runs), default=[run["id"] for run in default_runs(list(runs.values()))], key=f"compare_runs_{dataset_key}",
    format_func=lambda i: f"{run_label(runs[i])} · {runs[i]['test_acc']:.1f} % · {format_age(runs[i]['finished_at'])}",
)
if not chosen_ids:
    st.info("Choose at least one run.", icon=":material/info:")
    st.stop()
chosen = [runs[i] for i in chosen_ids]
if any(run["synthetic"] for run in chosen):
    st.badge("Synthetic data", icon=":material/auto_awesome:", color="orange", help="These runs are on a generated dataset, not real photos.")

table = runs_table(chosen)
number = st.column_config.NumberColumn
st.dataframe(
    table, hide_index=True,
    column_config={"test acc %": number(format="%.1f"), "test loss": number(format="%.4f"), "features s": number(format="%.1f"),
                   "train s": number(format="%.2f")},
)
summary = split_summary(table)
if (summary["runs"] > 1).any():
    st.markdown("**Mean and std per backbone** (sample std over its chosen runs: the splits, or repeats with other seeds)")
    st.dataframe(summary, hide_index=True, column_config={c: number(format="%.2f") for c in summary.columns if "mean" in c or "std" in c})

predictions = {run["id"]: predictions_frame(run, run_predictions(run)) for run in chosen}
downloads = st.container(horizontal=True)
downloads.download_button("Table as CSV", data=table.to_csv(index=False), file_name="flower-probe-runs.csv", mime="text/csv",
                          on_click="ignore", icon=":material/download:")
downloads.download_button("Per-image predictions as CSV", data=lambda: pd.concat(predictions.values()).to_csv(index=False),
                          file_name="flower-probe-predictions.csv", mime="text/csv", on_click="ignore", icon=":material/download:")

for run in chosen:
    if run["skipped"]:
        with st.expander(f"{run_label(run)} skipped {len(run['skipped'])} unreadable file(s)", icon=":material/broken_image:"):
            st.dataframe(pd.DataFrame(run["skipped"], columns=["file", "reason"]), hide_index=True)

st.subheader("Training curves")
st.plotly_chart(curves_figure({run_label(run): run_epochs(run) for run in chosen}), config={"displayModeBar": False})

st.subheader("Confusion matrices")
st.caption("Rows: true class; columns: predicted class; colour: share of the true class. Click a cell to see its test photos below.")
for start in range(0, len(chosen), MATRICES_PER_ROW):
    for column, run in zip(st.columns(MATRICES_PER_ROW), chosen[start:start + MATRICES_PER_ROW]):
        chart_key = f"confusion-{run['id']}"
        column.plotly_chart(
            confusion_figure(confusion=np.array(run["confusion"]), class_names=run["class_names"], title=run_label(run)),
            key=chart_key, on_select=partial(select_cell, run["id"], chart_key), selection_mode="points", config={"displayModeBar": False},
        )

st.markdown("**Test photos in one cell**")
if st.session_state.get("cell_run") not in chosen_ids:
    st.session_state["cell_run"] = chosen[0]["id"]
    st.session_state["cell_true"], st.session_state["cell_predicted"] = most_confused_cell(chosen[0]["confusion"])
columns = st.columns(3)
cell_run = runs[columns[0].selectbox("Run", chosen_ids, format_func=lambda i: run_label(runs[i]), key="cell_run")]
class_names = cell_run["class_names"]
for key in ("cell_true", "cell_predicted"):
    if st.session_state.get(key) not in range(len(class_names)):
        st.session_state[key] = 0
true_class = columns[1].selectbox("True class", range(len(class_names)), format_func=class_names.__getitem__, key="cell_true")
predicted_class = columns[2].selectbox("Predicted class", range(len(class_names)), format_func=class_names.__getitem__, key="cell_predicted")
frame = predictions[cell_run["id"]]
cell = frame[(frame["true index"] == true_class) & (frame["predicted index"] == predicted_class)].sort_values("confidence", ascending=False)
if cell.empty:
    st.caption("No test photo in this cell.")
else:
    gallery(cell, [f"{confidence:.0%} · {Path(file).name}" for file, confidence in zip(cell["file"], cell["confidence"])])

st.subheader("Per-class accuracy")
first_classes = chosen[0]["class_names"]
same_classes = [run for run in chosen if run["class_names"] == first_classes]
st.plotly_chart(per_class_figure(class_names=first_classes, accuracies={run_label(run): run["per_class_acc"] for run in same_classes}),
                config={"displayModeBar": False})
with st.expander("As a table"):
    st.dataframe(pd.DataFrame({"class": first_classes, **{run_label(run): run["per_class_acc"] for run in same_classes}}), hide_index=True)
if len(same_classes) < len(chosen):
    st.caption("Runs made when the dataset had other classes are left out of this chart.")

st.subheader("Misclassified test photos")
for tab, run in zip(st.tabs([run_label(run) for run in chosen]), chosen):
    with tab:
        frame = predictions[run["id"]]
        wrong = frame[~frame["correct"]].sort_values("confidence", ascending=False)
        st.caption(f"{len(wrong)} of {len(frame)} test photos misclassified, most confident mistakes first.")
        if not wrong.empty:
            gallery(wrong, [f"{true} → {predicted} ({confidence:.0%})"
                            for true, predicted, confidence in zip(wrong["true class"], wrong["predicted class"], wrong["confidence"])])
            with st.expander("As a table"):
                st.dataframe(wrong[["file", "true class", "predicted class", "confidence"]], hide_index=True,
                             column_config={"confidence": number(format="percent")})
