"""The Health page's parts: pick a dataset and a backbone, queue the feature extraction or the check, and show
label issues, duplicates (with leakage) and outliers as photo galleries, with exclusions and a CSV download.

The engine is ``core.health.checks``; a page render only reads cached reports (``dataset_health(..., compute=False)``),
the extraction and the check itself run in the job runner. Names and paths are shown through ``markdown_text``
(text, never markup). Pure helpers (``gallery_items``, ``pair_items``, ``health_csv``, ``comparison_frame``) carry
the logic the tests check without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from core.backbones.registry import list_backbones, local_weights
from core.backbones.variants import available_variants, default_variant
from core.base.csv_export import csv_text
from core.base.errors import FlowerProbeError, MissingFileError
from core.base.text import markdown_text
from core.data.datasets import list_datasets
from core.data.exclusions import exclude_images
from core.health.checks import (
    COPY_SSIM,
    CSV_COLUMNS,
    PHOTO_SIDE,
    HealthConfig,
    HealthReport,
    compare_health,
    dataset_health,
)
from core.jobs.runner import extraction_job, progress_job
from core.probing.experiment import BackboneChoice, parse_backbone
from core.runs.sanity import cache_feature_stats, collapsed_text
from ui.dataset import undo_exclusion_button, watch_jobs
from ui.jobs import any_job_active, live_jobs
from ui.state import job_runner, thumbnail, user_errors, workspace

THUMB_PX = 128
PER_ROW = 6
TITLE_PREFIXES = {"health": "Health check: ", "health-features": "Features for health: "}  # for people to read
JOB_KINDS = tuple(TITLE_PREFIXES)  # core.jobs.runner.JOB_KINDS: the jobs this page watches


@dataclass(frozen=True)
class HealthChoice:
    dataset: str
    backbone: str  # a spec: "resnet50", "resnet50@random"
    variant: str

    @property
    def choice(self) -> BackboneChoice:
        return parse_backbone(self.backbone)

    def title(self, prefix: str) -> str:
        return f"{prefix}{self.choice.label} ({self.variant}) on {self.dataset}"


def backbone_specs() -> list[str]:
    """Every built-in backbone, pretrained and with random weights."""
    return [spec for name in list_backbones() for spec in (name, BackboneChoice(name, "random").spec)]


def lookup(choice: HealthChoice) -> tuple[HealthReport | None, bool]:
    """(the cached report or None, whether the features are cached); raises FlowerProbeError for other problems.

    Never downloads: pretrained weights that are not here mean no cached features (the extraction job then
    downloads them, or says where to put them).
    """
    backbone = choice.choice
    if backbone.weights == "pretrained" and local_weights(backbone.backbone, workspace=workspace()) is None:
        return None, False
    try:
        report = dataset_health(
            choice.dataset,
            backbone.backbone,
            workspace=workspace(),
            weights=backbone.weights,
            variant=choice.variant,
            compute=False,
        )
    except MissingFileError as exc:
        if "No cached" in str(exc):
            return None, False
        raise
    return report, True


def queue_extraction(choice: HealthChoice) -> None:
    backbone = choice.choice
    job_runner().submit(
        choice.title(TITLE_PREFIXES["health-features"]),
        extraction_job(
            dataset=choice.dataset, backbone=backbone.backbone, workspace=workspace(), weights=backbone.weights
        ),
        kind="health-features",
        key=choice.title(""),
    )


def queue_check(choice: HealthChoice) -> None:
    backbone = choice.choice
    job_runner().submit(
        choice.title(TITLE_PREFIXES["health"]),
        progress_job(
            dataset_health,
            dataset_key=choice.dataset,
            backbone=backbone.backbone,
            workspace=workspace(),
            weights=backbone.weights,
            variant=choice.variant,
            config=HealthConfig(),
        ),
        kind="health",
        key=choice.title(""),
    )


def offer_next_step(choice: HealthChoice, *, has_features: bool, n_images: int) -> None:
    """Before there is a report: what comes next and its button; the check itself when the backbone's features of
    the dataset's ``n_images`` images are cached, else their extraction."""
    if has_features:
        st.info(
            "The features are cached; the check itself takes seconds to a minute.", icon=":material/health_and_safety:"
        )
        label, queue, key, icon = "Run the health check", queue_check, "health_run", ":material/play_arrow:"
    else:
        st.info(
            f"No cached features of this backbone for this dataset yet: extracting them is a forward pass over "
            f"{n_images} images (minutes on a CPU).",
            icon=":material/memory:",
        )
        label, queue, key, icon = "Extract features", queue_extraction, "health_extract", ":material/memory:"
    st.button(label, type="primary", on_click=queue, args=(choice,), key=key, icon=icon)


# ----------------------------------------------------------------------------------------------- pure helpers


def gallery_items(report: HealthReport, issue: str, *, limit: int, flagged_only: bool = False) -> list[dict]:
    """The ``limit`` top candidates of ``issue`` ("label" or "outlier").

    Each is ``path`` (relative to the dataset), ``caption``, ``score`` and ``flagged``.
    """
    if issue not in ("label", "outlier"):
        raise FlowerProbeError(f"issue must be 'label' or 'outlier', got {issue!r}.")
    names = report.class_names
    entries = report.label_issues if issue == "label" else report.outliers
    items = []
    for entry in entries:
        if flagged_only and not entry["flagged"]:
            continue
        i = entry["image"]
        if issue == "label":
            caption = (
                f"given {names[entry['given']]} → suggested {names[entry['suggested']]} · quality {entry['score']:.3f}"
                if entry["suggested"] != entry["given"]
                else f"{names[entry['given']]} · quality {entry['score']:.3f} · no other class suggested"
            )
        else:
            caption = f"{names[report.labels[i]]} · distance {entry['score']:.3f}"
        items.append(
            {
                "path": report.paths[i],
                "caption": f"{caption} · {report.parts[i] or 'no part'}",
                "score": entry["score"],
                "flagged": entry["flagged"],
            }
        )
        if len(items) == limit:
            break
    return items


def pair_items(report: HealthReport, *, threshold: float, limit: int) -> list[dict]:
    """Duplicate pairs at ``threshold``: both paths, their captions (class and part), similarity, exact, leakage."""
    names = report.class_names
    items = []
    for pair in report.duplicates(threshold)[:limit]:
        sides = [(pair["a"], pair["part_a"]), (pair["b"], pair["part_b"])]
        items.append(
            {
                "paths": [report.paths[i] for i, _ in sides],
                "captions": [f"{names[report.labels[i]]} · {part or 'no part'}" for i, part in sides],
                "similarity": pair["similarity"],
                "photo": pair["photo"],
                "exact": pair["exact"],
                "copy": pair["copy"],
                "leakage": pair["leakage"],
            }
        )
    return items


def health_csv(report: HealthReport, *, threshold: float) -> str:
    """The CSV download: one row per flagged image, formula-safe (``core.base.csv_export.csv_text``)."""
    return csv_text(report.flagged_rows(threshold), columns=CSV_COLUMNS)


def comparison_frame(reports: dict[str, HealthReport]) -> pd.DataFrame:
    """What each backbone flags, side by side, and how many label issues all of them flag."""
    return pd.DataFrame(compare_health(reports))


# ----------------------------------------------------------------------------------------------- drawing


def form() -> HealthChoice | None:
    """Draw what the check finds, then the dataset and backbone pickers; None after saying there is no dataset."""
    st.caption(
        "Cached features find the photos whose label disagrees with everything like them, the same photo filed twice "
        "(worst across train and test) and the photos that look like nothing else."
    )
    ws = workspace()
    entries = [entry for entry in list_datasets(ws) if entry.prepared]
    if not entries:
        st.info("No dataset is prepared yet. Prepare one on the Dataset page first.", icon=":material/photo_library:")
        st.page_link("pages/dataset.py", label="Dataset", icon=":material/photo_library:")
        return None
    names = {entry.key: entry.name for entry in entries}
    left, middle, right = st.columns([2, 2, 1])
    dataset = left.selectbox("Dataset", list(names), format_func=names.get, key="health_dataset")
    specs = backbone_specs()
    backbone = middle.selectbox(
        "Backbone",
        specs,
        index=specs.index("efficientnet_lite0"),
        key="health_backbone",
        format_func=lambda spec: parse_backbone(spec).label,
    )
    name = parse_backbone(backbone).backbone
    variants = list(available_variants(name))
    variant = right.selectbox("Features", variants, index=variants.index(default_variant(name)), key="health_variant")
    return HealthChoice(dataset=dataset, backbone=backbone, variant=variant)


def health_jobs() -> None:
    """This page's jobs, redrawn while one runs; when one finishes, the page shows its result."""
    live_jobs(
        lambda: watch_jobs(JOB_KINDS, state_key="health_watched_jobs"),
        busy=lambda: any_job_active(JOB_KINDS),
    )


def _gallery(dataset_root, items: list[dict], *, key: str) -> list[str]:
    """Photos in rows with a caption and an Exclude checkbox each; returns the checked paths."""
    chosen = []
    for start in range(0, len(items), PER_ROW):
        for column, item in zip(st.columns(PER_ROW), items[start : start + PER_ROW]):
            data, ok = thumbnail(dataset_root / item["path"], size=THUMB_PX)
            column.image(data, width=THUMB_PX, caption=markdown_text(item["path"] + ("" if ok else " (unreadable)")))
            column.caption(markdown_text(item["caption"]) + ("" if item["flagged"] else " · not flagged"))
            if column.checkbox("Exclude", key=f"{key}-{item['path']}"):
                chosen.append(item["path"])
    return chosen


def _pairs(dataset_root, items: list[dict], *, key: str) -> list[str]:
    chosen = []
    for number, item in enumerate(items):  # one image can sit in several pairs: the pair's number keeps keys unique
        with st.container(border=True):
            photo = "photos not compared" if item["photo"] is None else f"photo SSIM {item['photo']:.3f}"
            kind = (
                "exact copy (same bytes)"
                if item["exact"]
                else f"copy: the photos agree ({photo}, feature cosine {item['similarity']:.4f})"
                if item["copy"]
                else f"near neighbour: close in features (cosine {item['similarity']:.4f}) but the photos differ "
                f"({photo}); not a copy"
            )
            st.markdown(
                f"**{kind}**" + (" · :red[leakage: the copies sit in different parts]" if item["leakage"] else "")
            )
            for column, path, caption in zip(st.columns(4), item["paths"], item["captions"]):
                data, _ = thumbnail(dataset_root / path, size=THUMB_PX)
                column.image(data, width=THUMB_PX, caption=markdown_text(path))
                column.caption(markdown_text(caption))
                if column.checkbox("Exclude", key=f"{key}-{number}-{path}") and path not in chosen:
                    chosen.append(path)
    return chosen


def _exclusion_controls(dataset_key: str, chosen: list[str], *, reason: str, key: str) -> None:
    ws = workspace()
    left, right = st.columns(2)
    if left.button(
        f"Exclude {len(chosen)} selected image(s)", key=f"{key}-exclude", disabled=not chosen, icon=":material/block:"
    ):
        with user_errors():
            exclude_images(ws, dataset_key, chosen, reason=reason)
            st.rerun()
    undo_exclusion_button(right, dataset_key, key=f"{key}-undo")


def show_report(report: HealthReport, dataset_root) -> None:
    counts = report.counts()
    st.caption(
        markdown_text(
            f"{report.dataset_name} · {report.backbone} ({report.weights}) · features {report.variant} · "
            f"{len(report.paths)} images · fingerprint {report.fingerprint} · "
            f"computed in {report.timings['total_s']:.1f} s"
            + (f" · {len(report.skipped)} skipped (excluded or unreadable)" if report.skipped else "")
        )
    )
    # Collapsed features (random-weight EfficientNet-Lite0's have a mean norm of ~2e-7) make every check unreliable.
    collapsed = collapsed_text(
        cache_feature_stats(workspace().features_dir / report.features_file, variant=report.variant)
        if report.features_file
        else None,
        who=f"{report.backbone} ({'random weights' if report.weights == 'random' else report.weights})",
    )
    if collapsed:
        st.warning(markdown_text(collapsed), icon=":material/warning:")
    # Down to the lowest stored candidate (pairs below it were never kept), and never a slider of zero width.
    floor = min(report.candidate_floor, report.duplicate_threshold, 0.99)
    threshold = st.slider(
        "Near-neighbour threshold (feature cosine similarity)",
        min_value=float(round(floor, 4)),
        max_value=1.0,
        value=float(round(report.duplicate_threshold, 4)),
        step=0.0005,
        format="%.4f",
        key="health_threshold",
        help=f"Default {report.duplicate_threshold:.4f}, {report.threshold_source}. Exact byte copies always count. "
        f"A pair is a copy (and leakage across parts) only when its photos agree: SSIM >= {COPY_SSIM:g} of grey "
        f"{PHOTO_SIDE} px thumbnails.",
    )
    counts = report.counts(threshold)
    columns = st.columns(len(counts))
    for column, (name, value) in zip(columns, counts.items()):
        column.metric(name.capitalize(), value)
    shown = st.slider("Candidates shown per tab", min_value=6, max_value=60, value=18, step=6, key="health_shown")
    labels_tab, duplicates_tab, outliers_tab, compare_tab = st.tabs(
        [
            f"Label issues ({counts['label issues']})",
            f"Copies and near neighbours ({counts['copies']} + {counts['near neighbours']})",
            f"Outliers ({counts['outliers']})",
            "Compare backbones",
        ]
    )
    with labels_tab:
        st.caption(
            "Lowest label quality first (cleanlab, out-of-sample logistic regression on train+val; "
            "the test part is not checked)."
        )
        chosen = _gallery(dataset_root, gallery_items(report, "label", limit=shown), key="label")
        _exclusion_controls(report.dataset_key, chosen, reason="label issue", key="label")
    with duplicates_tab:
        items = pair_items(report, threshold=threshold, limit=shown)
        st.caption(
            "Copies first (the photos agree: same bytes, or SSIM of the photos at least "
            f"{COPY_SSIM:g}); then near neighbours, photos a backbone puts close together that are not copies."
        )
        if not items:
            st.info("No pair reaches this threshold.", icon=":material/check_circle:")
        chosen = _pairs(dataset_root, items, key="pair")
        _exclusion_controls(report.dataset_key, chosen, reason="duplicate", key="pair")
    with outliers_tab:
        st.caption(f"Farthest first: cosine distance to the {report.config['outlier_k']}-th nearest training image.")
        chosen = _gallery(dataset_root, gallery_items(report, "outlier", limit=shown), key="outlier")
        _exclusion_controls(report.dataset_key, chosen, reason="outlier", key="outlier")
    with compare_tab:
        compare_section(report)
    st.download_button(
        "Download flagged images (CSV)",
        health_csv(report, threshold=threshold),
        file_name="health.csv",
        mime="text/csv",
        icon=":material/download:",
        key="health_csv",
    )


def compare_section(report: HealthReport) -> None:
    """A second backbone's cached report on the same data, side by side with this one."""
    # The same architecture with the other weights first: how much does pretraining find?
    flipped = BackboneChoice(report.backbone, "random" if report.weights == "pretrained" else "pretrained").spec
    specs = [flipped] + [
        s for s in backbone_specs() if s not in (flipped, BackboneChoice(report.backbone, report.weights).spec)
    ]
    other = st.selectbox(
        "Second backbone", specs, format_func=lambda spec: parse_backbone(spec).label, key="health_other"
    )
    second = HealthChoice(
        dataset=report.dataset_key, backbone=other, variant=default_variant(parse_backbone(other).backbone)
    )
    found, has_features = None, False
    with user_errors():
        found, has_features = lookup(second)
    if found is None:
        st.info("That backbone has no health report for this data yet.", icon=":material/info:")
        if has_features:
            st.button("Run its health check", on_click=queue_check, args=(second,), key="health_other_check")
        else:
            st.button("Extract its features", on_click=queue_extraction, args=(second,), key="health_other_extract")
        return
    reports = {
        BackboneChoice(report.backbone, report.weights).label: report,
        BackboneChoice(found.backbone, found.weights).label: found,
    }
    with user_errors():
        st.dataframe(comparison_frame(reports), hide_index=True)
