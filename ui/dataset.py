"""The Dataset page's parts: choose a dataset, prepare a built-in one (a background job with progress), class
counts per split, sample photos per class, and the images the user excluded (``core.data.exclusions``).

Every dataset's state reads the same words everywhere (``core.data.datasets.DatasetEntry.state``). Class and file
names are shown as text, never as HTML or Markdown (``core.base.text.markdown_text``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.base.text import markdown_text
from core.data.datasets import OXFORD17_KEY, Dataset, DatasetEntry, dataset_summary, list_datasets, prepare_dataset
from core.data.exclusions import can_undo, excluded_images, include_images, undo_exclusions
from core.jobs.runner import progress_job
from ui.gallery import full_gallery
from ui.jobs import any_job_active, job_card, live_jobs
from ui.labels import dataset_label
from ui.lanes import show_prompt_editor
from ui.launch import files_to_fetch, missing_files_markdown
from ui.state import cached_dataset, job_runner, user_errors, workspace
from ui.widgets import bar_table, photo_grid

PREPARE_TITLE = "Prepare {name}"
PREPARE_KINDS = ("prepare",)  # core.jobs.runner.JOB_KINDS: the jobs this page watches
THUMB_PX = 96
MAX_CLASSES_SHOWN = 20  # sample rows shown at once; more classes are picked from a list
CLASSES_PER_ROW = 2  # six 96 px photos fill half of a wide page


def sample_rows(dataset: Dataset, label: int, *, count: int) -> np.ndarray:
    """``count`` rows of class ``label`` spread evenly over the class (not just its first files)."""
    rows = np.flatnonzero(dataset.labels == label)
    if len(rows) <= count:
        return rows
    return rows[np.unique(np.linspace(0, len(rows) - 1, count).round().astype(int))]


def entry_label(entries: dict[str, DatasetEntry], key: str) -> str:
    """``Oxford 17 flowers (not prepared: downloaded ... when first used)``: a name and, unless prepared, its state."""
    entry = entries.get(key)
    if entry is None:
        return key
    return entry.name if entry.prepared else f"{entry.name} ({entry.state})"


def prepare(key: str, name: str) -> None:
    job_runner().submit(
        PREPARE_TITLE.format(name=name),
        progress_job(prepare_dataset, key=key, workspace=workspace()),
        kind="prepare",
        key=key,
    )


def watch_jobs(kinds: tuple[str, ...], *, state_key: str, shown: int = 3) -> None:
    """Cards of the newest jobs of ``kinds`` (``core.jobs.runner.JOB_KINDS``); when one this session watched
    finishes, the whole page reruns to show its result. Call it from ``ui.jobs.live_jobs``."""
    jobs = job_runner().find(kinds=kinds)[:shown]
    watched = st.session_state.setdefault(state_key, set())
    finished = {job.id for job in jobs if not job.active} & watched
    watched.difference_update(finished)
    watched.update(job.id for job in jobs if job.active)
    for job in jobs:
        job_card(job)
    if finished:
        st.rerun(scope="app")


def preparation_jobs() -> None:
    """Live progress of dataset preparation; when one finishes, the page shows the dataset."""
    live_jobs(
        lambda: watch_jobs(PREPARE_KINDS, state_key="dataset_watched_jobs"),
        busy=lambda: any_job_active(PREPARE_KINDS),
    )


def choose(requested: str | None) -> tuple[str, DatasetEntry | None]:
    """The dataset selectbox (``requested``, from ``?dataset=``, first).

    Returns the key and its entry (None: a folder key that is not listed).
    """
    ws = workspace()
    entries = {entry.key: entry for entry in list_datasets(ws)}
    keys = list(entries) + ([requested] if requested and requested not in entries else [])
    first_prepared = next((key for key in keys if entries[key].prepared), keys[0])
    choice = st.selectbox(
        "Dataset",
        keys,
        index=keys.index(requested or first_prepared),
        format_func=lambda key: entry_label(entries, key),
    )
    st.caption(
        f"Your own dataset: a folder under the data root `{ws.data_root}` with one subfolder of images per class "
        "(optionally inside train/, val/ and test/ folders). It appears in this list."
    )
    return choice, entries.get(choice)


def not_prepared(entry: DatasetEntry) -> None:
    """What preparing a built-in dataset does, and its button."""
    if entry.key == OXFORD17_KEY:
        missing = files_to_fetch(dataset=OXFORD17_KEY, backbones=[])
        st.info(
            f"Oxford 17 flowers is {entry.state}. 1,360 photos of 17 flower species, 80 a class, with three official "
            "train/val/test splits. "
            + (
                "Preparing it downloads these files (about 60 MB) and checks their checksums:\n\n"
                + missing_files_markdown(missing)
                + "\n\nOffline? Download them on another computer and put them in that folder; "
                "preparing then uses them."
                if missing
                else "Both files are here; preparing extracts the photos."
            ),
            icon=":material/download:",
        )
        st.button(
            "Download and prepare Oxford 17" if missing else "Prepare Oxford 17",
            type="primary",
            icon=":material/download:",
            on_click=prepare,
            args=(entry.key, entry.name),
        )
    else:
        st.info(
            f"Synthetic Flowers is {entry.state}. 17 classes of procedurally drawn flowers, 80 images a class, "
            "generated here in seconds. It is synthetic data, for trying Flower Probe offline.",
            icon=":material/auto_awesome:",
        )
        st.button(
            "Generate Synthetic Flowers",
            type="primary",
            icon=":material/auto_awesome:",
            on_click=prepare,
            args=(entry.key, entry.name),
        )
    preparation_jobs()


def load(choice: str) -> Dataset | None:
    """The dataset, or None after showing why it cannot be read and what a folder dataset needs."""
    dataset = None
    with user_errors():
        dataset = cached_dataset(choice)
    if dataset is None:
        st.info(
            "A folder dataset needs at least two class folders, each with at least three images (jpg, png, webp, ...), "
            f"and must lie under the data root `{workspace().data_root}`. Fix the folder, then reload this page.",
            icon=":material/help:",
        )
    return dataset


def overview(dataset: Dataset) -> None:
    if any_job_active(PREPARE_KINDS):
        preparation_jobs()
    if dataset.synthetic:
        st.badge("Synthetic data", icon=":material/auto_awesome:", color="orange")
    columns = st.columns(4)
    columns[0].metric("Classes", dataset.num_classes)
    columns[1].metric("Images", len(dataset.image_paths))
    columns[2].metric("Splits", len(dataset.splits))
    columns[3].metric("Excluded", len(dataset.excluded))
    st.page_link(
        "pages/train.py",
        label=f"Train on {dataset_label(dataset.name, dataset.synthetic)}",
        icon=":material/model_training:",
    )


def class_counts(dataset: Dataset) -> None:
    st.subheader("Images per class")
    summary = dataset_summary(dataset)
    split_ids = sorted(dataset.splits)
    split = (
        st.segmented_control("Split", split_ids, default=split_ids[0], required=True)
        if len(split_ids) > 1
        else split_ids[0]
    )
    counts = summary["counts"][split]
    table = pd.DataFrame({"class": list(dataset.class_names), **counts})
    table["total"] = table[list(counts)].sum(axis=1)
    # Bars inside the table rather than a Plotly chart: the same numbers, and the page needs no plotly.js, whose
    # first parse in a new tab cost ~0.7 s of the page's 3.2 s in Chromium (python -m bench --only browser).
    bar_table(table, bars=list(counts), largest=max(1, int(table[list(counts)].to_numpy().max())))


def sample_photos(dataset: Dataset) -> None:
    st.subheader("Sample photos")
    classes = list(range(dataset.num_classes))
    if len(classes) > MAX_CLASSES_SHOWN:
        classes = st.multiselect(
            "Classes",
            classes,
            default=classes[:MAX_CLASSES_SHOWN],
            format_func=lambda i: dataset.class_names[i],
            help=f"{dataset.num_classes} classes; choose which to show.",
        )
    per_class = st.slider("Photos per class", min_value=3, max_value=12, value=6)
    unreadable = []
    for start in range(0, len(classes), CLASSES_PER_ROW):
        for column, label in zip(st.columns(CLASSES_PER_ROW, gap="medium"), classes[start : start + CLASSES_PER_ROW]):
            rows = sample_rows(dataset, label, count=per_class)
            column.markdown(
                f"**{markdown_text(dataset.class_names[label])}** · {int((dataset.labels == label).sum())} images"
            )
            unreadable += photo_grid(
                [dataset.image_paths[row] for row in rows],
                [dataset.image_paths[row].name for row in rows],
                size=THUMB_PX,
                container=column,
            )
    if unreadable:
        st.warning(
            f"{len(unreadable)} of the photos shown could not be read; feature extraction skips such files "
            "and lists them with the run.",
            icon=":material/broken_image:",
        )
        st.dataframe(pd.DataFrame({"unreadable file": [str(p) for p in unreadable]}), hide_index=True)


def excluded_section(dataset_key: str) -> None:
    """The images excluded from ``dataset_key`` (Dataset and Health pages), with Include again and Undo."""
    ws = workspace()
    excluded = excluded_images(ws, dataset_key)
    if not excluded:
        st.caption("No images are excluded from this dataset. The Health page can exclude the ones it flags.")
        return
    st.caption(
        f"{len(excluded)} image(s) are excluded: later runs skip them and record which. Their files are untouched."
    )
    st.dataframe(
        pd.DataFrame([{"image": path, "reason": info.get("reason", "")} for path, info in sorted(excluded.items())]),
        hide_index=True,
    )
    back = st.multiselect("Include again", sorted(excluded), key=f"include-choice-{dataset_key}")
    left, right = st.columns(2)
    if left.button(
        f"Include {len(back)} image(s) again", disabled=not back, key=f"include-{dataset_key}", icon=":material/undo:"
    ):
        include_images(ws, dataset_key, back)
        st.rerun()
    undo_exclusion_button(right, dataset_key, key=f"undo-{dataset_key}")


def undo_exclusion_button(container, dataset_key: str, *, key: str) -> None:
    """Undo the last exclusion change of ``dataset_key`` (Dataset and Health pages); disabled when there is none."""
    ws = workspace()
    if container.button(
        "Undo the last exclusion change",
        key=key,
        disabled=not can_undo(ws, dataset_key),
        icon=":material/history:",
    ):
        with user_errors():
            undo_exclusions(ws, dataset_key)
            st.rerun()


def dataset_page(requested: str | None) -> None:
    """The whole Dataset page below its title."""
    choice, entry = choose(requested)
    if entry is not None and not entry.prepared:
        not_prepared(entry)
        return
    dataset = load(choice)
    if dataset is None:
        return
    overview(dataset)
    class_counts(dataset)
    sample_photos(dataset)
    full_gallery(dataset)  # every photo, paged, by split part and class, click to enlarge (ui.gallery)
    st.subheader("Excluded images")
    excluded_section(dataset.key)
    show_prompt_editor(dataset)  # the zero-shot lane's class names and templates (ui.lanes)
