"""The Patches page's logic: choose photos and a backbone, compute patch features in the job runner, draw the views.

``pages/patches.py`` reads top to bottom (title, ``choose_inputs()``, ``patch_job(...)``, ``show_views(...)``).
The patch features come from ``core.maps.patches.patch_grids`` (cached per image file), run as a background
job so the page never blocks; the PCA and pictures (``core.maps.patches.patch_views``) are instant, so the
threshold slider redraws without recomputing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.backbones.registry import list_backbones
from core.base.text import markdown_text
from core.data.datasets import list_datasets
from core.data.images import SUPPORTED_UPLOAD_TYPES
from core.jobs.runner import progress_job
from core.maps.patches import DEFAULT_THRESHOLD, MIN_PATCHES, patch_grids, patch_views, sign_note
from ui.jobs import job_card
from ui.labels import dataset_label
from ui.state import cached_dataset, job_runner, workspace

MAX_IMAGES = 8  # one PCA over all chosen photos: 8 x 256 ViT patches stay instant, and 8 rows fit a screen
DEFAULT_BACKBONE = "dinov2_vits14"  # the model of the DINOv2 paper's patch-PCA figure
_JOB_KEY = "patches_job"  # (inputs key, job id) of the last computation this session asked for
JOB_TITLE = "Patch features"


@dataclass(frozen=True)
class PatchInputs:
    backbone: str
    weights: str  # "pretrained" or "random"
    images: list[tuple[str, object]]  # (name, source): dataset files (cached) or upload bytes
    key: tuple  # identifies the inputs: a new key means a new job


def choose_inputs() -> PatchInputs | None:
    """Backbone, weights and photos (dataset images and uploads); None after saying what is missing."""
    left, right = st.columns(2)
    names = list_backbones()
    backbone = left.selectbox(
        "Backbone",
        names,
        index=names.index(DEFAULT_BACKBONE),
        key="patches_backbone",
        help="ViTs (DINOv2, timm ViTs) give patch tokens; CNNs their last feature map, a coarser grid.",
    )
    weights = left.radio(
        "Weights",
        ["pretrained", "random"],
        horizontal=True,
        key="patches_weights",
        help="Random weights show what the architecture alone does: the contrast with pretrained is the point.",
    )
    prepared = {
        entry.key: dataset_label(entry.name, "synthetic" in entry.key)
        for entry in list_datasets(workspace())
        if entry.prepared
    }
    images: list[tuple[str, object]] = []
    if prepared:
        key = right.selectbox("Dataset", list(prepared), format_func=prepared.get, key="patches_dataset")
        dataset = cached_dataset(key)
        # Default: the first photo of the first few classes, so the PCA compares like with unlike.
        defaults = [
            int(next(row for row, label in enumerate(dataset.labels) if label == c))
            for c in range(min(3, dataset.num_classes))
        ]
        rows = right.multiselect(
            "Photos of the dataset",
            list(range(len(dataset.image_paths))),
            default=defaults,
            max_selections=MAX_IMAGES,
            format_func=lambda r: f"{dataset.class_names[dataset.labels[r]]} · {dataset.image_paths[r].name}",
            key=f"patches_rows_{key}",
        )
        images += [(dataset.image_paths[row].name, dataset.image_paths[row]) for row in rows]
    uploads = right.file_uploader(
        "…or your photos",
        type=SUPPORTED_UPLOAD_TYPES,
        accept_multiple_files=True,
        key="patches_uploads",
        help="Kept in memory for this session only; never saved to disk.",
    )
    images += [(upload.name, upload.getvalue()) for upload in uploads or []]
    if not images:
        st.info(
            "Choose photos of a dataset or upload some: the PCA runs over the patches of all of them together.",
            icon=":material/info:",
        )
        return None
    if len(images) > MAX_IMAGES:
        st.warning(f"Showing the first {MAX_IMAGES} of {len(images)} photos.", icon=":material/warning:")
        images = images[:MAX_IMAGES]
    key = (
        backbone,
        weights,
        tuple(str(source) if not isinstance(source, bytes) else hash(source) for _, source in images),
    )
    return PatchInputs(backbone=backbone, weights=weights, images=images, key=key)


def patch_job(inputs: PatchInputs):
    """The finished job holding these inputs' patch features, or None while it runs (its card is shown)."""
    runner = job_runner()
    asked = st.session_state.get(_JOB_KEY)
    job = None
    if asked is not None and asked[0] == inputs.key:
        job = next((j for j in runner.jobs() if j.id == asked[1]), None)
    if job is None:
        if not st.button("Compute patch features", icon=":material/grid_on:", type="primary", key="patches_compute"):
            st.caption("Runs in the background job queue (one model forward per photo not computed before).")
            return None
        job = runner.submit(
            f"{JOB_TITLE}: {inputs.backbone} ({inputs.weights}), {len(inputs.images)} photo(s)",
            progress_job(
                patch_grids,
                images=inputs.images,
                backbone=inputs.backbone,
                weights=inputs.weights,
                workspace=workspace(),
            ),
        )
        st.session_state[_JOB_KEY] = (inputs.key, job.id)
    if job.status == "completed":
        return job
    _wait(job.id)
    return None


@st.fragment(run_every=1.0)
def _wait(job_id: int) -> None:
    """The job's card, refreshed every second; the page reruns once the job has finished."""
    job = next(j for j in job_runner().jobs() if j.id == job_id)
    job_card(job)
    if job.status == "completed":
        st.rerun()


def show_views(job) -> None:
    """Each photo beside its first-component heat map, its foreground and the RGB of three components."""
    grids = job.result
    rows, cols = grids[0].grid
    total = sum(g.grid[0] * g.grid[1] for g in grids)
    if total < MIN_PATCHES:
        st.info(
            f"These photos give {total} patches: a PCA needs at least {MIN_PATCHES}. Choose more photos.",
            icon=":material/info:",
        )
        return
    threshold = st.slider(
        "Foreground threshold",
        0.0,
        1.0,
        DEFAULT_THRESHOLD,
        step=0.05,
        key="patches_threshold",
        help="Patches whose first component (scaled to 0-1 over all photos) is above this are foreground.",
    )
    views, pca = patch_views(grids, threshold=threshold)
    what = (
        "patch tokens"
        if grids[0].kind == "tokens"
        else "no patch tokens (a CNN): its last feature map stands in, a coarser grid"
    )
    st.caption(
        markdown_text(
            f"{job.title.split(': ', 1)[-1]}: {what}, {rows} x {cols} = {rows * cols} patches per photo; "
            f"one PCA over the {total} patches of the {len(grids)} photos. {sign_note(pca)}"
        )
    )
    for view in views:
        st.markdown(
            f"**{markdown_text(view.name)}** · {int(view.foreground.sum())} of {rows * cols} patches foreground"
        )
        st.image(
            [view.crop, view.heat, view.mask, view.rgb],
            width=200,
            caption=[
                "photo (model input)",
                "first component",
                f"foreground (> {threshold:g})",
                "RGB: components 1-3 of the foreground",
            ],
        )
