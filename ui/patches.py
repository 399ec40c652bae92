"""The Patches page's logic: choose photos and a backbone, compute patch features in the job runner, draw the views.

``pages/patches.py`` reads top to bottom (title, ``choose_inputs()``, ``patch_job(...)``, ``show_views(...)``).
The patch features come from ``core.maps.patches.patch_grids`` (cached per image file), run as a background
job so the page never blocks; the PCA and pictures (``core.maps.patches.patch_views``) are instant, so the
threshold slider redraws without recomputing anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.backbones.registry import list_backbones, local_weights
from core.base.text import markdown_text
from core.data.datasets import list_datasets
from core.data.images import SUPPORTED_UPLOAD_TYPES
from core.jobs.runner import progress_job
from core.maps.patches import MIN_PATCHES, otsu_threshold, patch_grids, patch_pca, patch_views, sign_note
from ui.jobs import job_card, live_jobs
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

    def describe(self) -> str:
        """``dinov2_vits14 (pretrained), 3 photo(s)``: the job's title and the views' caption say it."""
        return f"{self.backbone} ({self.weights}), {len(self.images)} photo(s)"


def default_backbone(names: list[str]) -> str:
    """``DEFAULT_BACKBONE`` when its pretrained weights are here, else the first backbone whose weights are (offline:
    EfficientNet-Lite0, shipped in a pip package), else ``DEFAULT_BACKBONE`` (the page then warns)."""
    here = [name for name in names if local_weights(name, workspace=workspace()) is not None]
    return DEFAULT_BACKBONE if DEFAULT_BACKBONE in here or not here else here[0]


def choose_inputs() -> PatchInputs | None:
    """What the views show, then the inputs: backbone, weights and photos (dataset images and uploads); None after
    saying what is missing."""
    st.caption(
        "One PCA over the patch features of the chosen photos: the first component separates object from background, "
        "the next three, shown as colours, match the object's parts across photos."
    )
    left, right = st.columns(2)
    names = list_backbones()
    default = default_backbone(names)
    backbone = left.selectbox(
        "Backbone",
        names,
        index=names.index(default),
        key="patches_backbone",
        help="ViTs (DINOv2, timm ViTs) give patch tokens; CNNs their last feature map, a coarser grid. "
        f"Chosen at first: {DEFAULT_BACKBONE} when its weights are here, else the first backbone whose are.",
    )
    weights = left.radio(
        "Weights",
        ["pretrained", "random"],
        horizontal=True,
        key="patches_weights",
        help="Random weights show what the architecture alone does: the contrast with pretrained is the point.",
    )
    if weights == "pretrained" and local_weights(backbone, workspace=workspace()) is None:
        # As Train warns: the job would try to download them, which fails on an offline machine.
        st.warning(
            f"The pretrained weights of {markdown_text(backbone)} are not in this workspace yet: computing downloads "
            "them first, which needs internet access. Offline, choose a backbone whose weights are here "
            f"({markdown_text(', '.join(n for n in names if local_weights(n, workspace=workspace())) or 'none')}) "
            "or random weights.",
            icon=":material/cloud_off:",
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
            f"{JOB_TITLE}: {inputs.describe()}",
            progress_job(
                patch_grids,
                images=inputs.images,
                backbone=inputs.backbone,
                weights=inputs.weights,
                workspace=workspace(),
            ),
            kind="patches",
            key=repr(inputs.key),
        )
        st.session_state[_JOB_KEY] = (inputs.key, job.id)
    if job.status == "completed":
        return job
    _wait(job.id)
    return None


def _wait(job_id: int) -> None:
    """The job's card, refreshed while it runs (``ui.jobs.live_jobs``); the page reruns once the job has finished."""
    live_jobs(lambda: job_card(job_runner().get(job_id)), busy=lambda: job_runner().get(job_id).active)


def show_views(job, inputs: PatchInputs) -> None:
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
    automatic = round(otsu_threshold(patch_pca(grids)), 2)
    if st.session_state.get("patches_threshold_for") != inputs.key:  # new photos or backbone: start at their Otsu
        st.session_state["patches_threshold_for"] = inputs.key
        st.session_state["patches_threshold"] = automatic
    threshold = st.slider(
        "Foreground threshold",
        0.0,
        1.0,
        step=0.01,
        key="patches_threshold",
        help="Patches whose first component (scaled to 0-1 over all photos) is above this are foreground. It starts "
        f"at the automatic threshold, {automatic:g} (Otsu's method on the first component of every patch).",
    )
    st.caption(f"Automatic threshold (Otsu on the first component): {automatic:g}. Move the slider to change it.")
    views, pca = patch_views(grids, threshold=threshold)
    what = (
        "patch tokens"
        if grids[0].kind == "tokens"
        else "no patch tokens (a CNN): its last feature map stands in, a coarser grid"
    )
    st.caption(
        markdown_text(
            f"{inputs.describe()}: {what}, {rows} x {cols} = {rows * cols} patches per photo; "
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
