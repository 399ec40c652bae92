"""Dataset: choose or prepare a dataset, see its class counts per split and sample photos of each class.

Preparing (the Oxford 17 download, generating Synthetic Flowers) runs as a background job with a progress
bar, so the page stays usable. Class and file names are shown as text, never as HTML or Markdown.
``?dataset=<key>`` opens a dataset directly (other pages link here that way).
"""

import numpy as np
import pandas as pd
import streamlit as st

from core.datasets import Dataset, dataset_summary, list_datasets, prepare_dataset
from core.jobs import progress_job
from ui.auth import require_access
from ui.charts import class_counts_figure
from ui.common import (
    cached_dataset, dataset_label, files_to_fetch, job_card, job_runner, md, missing_files_markdown, thumbnail, user_errors, workspace,
)

require_access()  # first: no Streamlit mode runs this page past the access gate

PREPARE_TITLE = "Prepare {name}"
THUMB_PX = 96
MAX_CLASSES_SHOWN = 20  # sample rows shown at once; more classes are picked from a list
CLASSES_PER_ROW = 2  # six 96 px photos fill half of a wide page


def sample_rows(dataset: Dataset, label: int, *, count: int) -> np.ndarray:
    """``count`` rows of class ``label`` spread evenly over the class (not just its first files)."""
    rows = np.flatnonzero(dataset.labels == label)
    if len(rows) <= count:
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, count).round().astype(int))]


def prepare(key: str, name: str) -> None:
    job_runner().submit(PREPARE_TITLE.format(name=name), progress_job(prepare_dataset, key=key, workspace=workspace()))


@st.fragment(run_every=1.0)
def preparation_jobs() -> None:
    """Live progress of dataset preparation; when one finishes, the whole page reruns to show the dataset."""
    jobs = [job for job in job_runner().jobs() if job.title.startswith(PREPARE_TITLE.format(name=""))][:3]
    watched = st.session_state.setdefault("dataset_watched_jobs", set())
    finished = {job.id for job in jobs if not job.active} & watched
    watched.difference_update(finished)
    watched.update(job.id for job in jobs if job.active)
    for job in jobs:
        job_card(job)
    if finished:
        st.rerun(scope="app")


st.title(":material/photo_library: Dataset")
ws = workspace()
entries = {entry.key: entry for entry in list_datasets(ws)}
requested = st.query_params.get("dataset")
keys = list(entries) + ([requested] if requested and requested not in entries else [])
first_prepared = next((key for key in keys if entries[key].prepared), keys[0])
choice = st.selectbox(
    "Dataset", keys, index=keys.index(requested or first_prepared),
    format_func=lambda key: entries[key].name + ("" if entries[key].prepared else " (not prepared yet)") if key in entries else key,
)
st.caption(
    f"Your own dataset: a folder under the data root `{ws.data_root}` with one subfolder of images per class "
    "(optionally inside train/, val/ and test/ folders). It appears in this list."
)
entry = entries.get(choice)

if entry is not None and not entry.prepared:
    if choice == "oxford17":
        missing = files_to_fetch(dataset="oxford17", backbones=[])
        st.info(
            "Oxford 17 flowers: 1,360 photos of 17 flower species, 80 a class, with three official train/val/test splits. "
            + ("Preparing it downloads these files (about 60 MB) and checks their checksums:\n\n" + missing_files_markdown(missing)
               + "\n\nOffline? Download them on another computer and put them in that folder; preparing then uses them."
               if missing else "Both files are here; preparing extracts the photos."),
            icon=":material/download:",
        )
        st.button("Download and prepare Oxford 17" if missing else "Prepare Oxford 17", type="primary",
                  icon=":material/download:", on_click=prepare, args=(choice, entry.name))
    else:
        st.info(
            "Synthetic Flowers: 17 classes of procedurally drawn flowers, 80 images a class, generated here in seconds. "
            "It is synthetic data, for trying Flower Probe offline.",
            icon=":material/auto_awesome:",
        )
        st.button("Generate Synthetic Flowers", type="primary", icon=":material/auto_awesome:", on_click=prepare, args=(choice, entry.name))
    preparation_jobs()
    st.stop()

dataset = None
with user_errors():
    dataset = cached_dataset(choice)
if dataset is None:
    st.info(
        "A folder dataset needs at least two class folders, each with at least three images (jpg, png, webp, ...), "
        f"and must lie under the data root `{ws.data_root}`. Fix the folder, then reload this page.",
        icon=":material/help:",
    )
    st.stop()

if any(job.active and job.title.startswith(PREPARE_TITLE.format(name="")) for job in job_runner().jobs()):
    preparation_jobs()
if dataset.synthetic:
    st.badge("Synthetic data", icon=":material/auto_awesome:", color="orange")
summary = dataset_summary(dataset)
columns = st.columns(3)
columns[0].metric("Classes", dataset.num_classes)
columns[1].metric("Images", len(dataset.image_paths))
columns[2].metric("Splits", len(dataset.splits))
st.page_link("pages/train.py", label=f"Train on {dataset_label(dataset.name, dataset.synthetic)}", icon=":material/model_training:")

st.subheader("Images per class")
split_ids = sorted(dataset.splits)
split = st.segmented_control("Split", split_ids, default=split_ids[0], required=True) if len(split_ids) > 1 else split_ids[0]
counts = summary["counts"][split]
st.plotly_chart(class_counts_figure(class_names=dataset.class_names, counts=counts), config={"displayModeBar": False})
with st.expander("As a table"):
    table = pd.DataFrame({"class": list(dataset.class_names), **counts})
    table["total"] = table[list(counts)].sum(axis=1)
    st.dataframe(table, hide_index=True)

st.subheader("Sample photos")
classes = list(range(dataset.num_classes))
if len(classes) > MAX_CLASSES_SHOWN:
    classes = st.multiselect(
        "Classes", classes, default=classes[:MAX_CLASSES_SHOWN], format_func=lambda i: dataset.class_names[i],
        help=f"{dataset.num_classes} classes; choose which to show.",
    )
per_class = st.slider("Photos per class", min_value=3, max_value=12, value=6)
unreadable = []
for start in range(0, len(classes), CLASSES_PER_ROW):
    for column, label in zip(st.columns(CLASSES_PER_ROW, gap="medium"), classes[start:start + CLASSES_PER_ROW]):
        rows = sample_rows(dataset, label, count=per_class)
        thumbs = [thumbnail(dataset.image_paths[row], size=THUMB_PX) for row in rows]
        unreadable += [dataset.image_paths[row] for row, (_, ok) in zip(rows, thumbs) if not ok]
        column.markdown(f"**{md(dataset.class_names[label])}** · {int((dataset.labels == label).sum())} images")
        column.image(
            [data for data, _ in thumbs], width=THUMB_PX, output_format="JPEG",
            caption=[md(dataset.image_paths[row].name + ("" if ok else " (unreadable)")) for row, (_, ok) in zip(rows, thumbs)],
        )
if unreadable:
    st.warning(
        f"{len(unreadable)} of the photos shown could not be read; feature extraction skips such files and lists them with the run.",
        icon=":material/broken_image:",
    )
    st.dataframe(pd.DataFrame({"unreadable file": [str(p) for p in unreadable]}), hide_index=True)
