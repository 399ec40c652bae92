"""The Home page's parts: the workspace summary, recent runs, and the ready-made comparisons with their duration.

The reference comparison (``core.probing.presets.REFERENCE``) needs two dataset files and two weights files; they
are checked on disk only (never on the network: a render must not block). When some are missing the
page names them and offers the offline demo (``core.probing.presets.OFFLINE_DEMO``: EfficientNet-Lite0 pretrained
vs random weights on Synthetic Flowers), optionally with a random ResNet-50. Every button states how long
its run should take before the click (``ui.launch.expected_duration``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.base.text import markdown_text
from core.data.datasets import OXFORD17_KEY, list_datasets
from core.features.extract import ShardedCache
from core.jobs.runner import comparison_job
from core.probing.presets import OFFLINE_DEMO, OFFLINE_DEMO_RANDOM_RESNET, REFERENCE, ComparisonPreset
from ui.labels import dataset_label, format_age, format_bytes, weights_label
from ui.launch import duration_text, expected_duration, files_to_fetch, missing_files_markdown
from ui.state import job_runner, list_runs, user_errors, workspace

RECENT_RUNS = 8
LAUNCHED_KEY = "home_launched"  # session state: the job id of the last launch, shown once


def launch(preset: ComparisonPreset) -> None:
    """Queue ``preset`` in the job runner (a button callback: the message shows on the rerun it triggers)."""
    with user_errors():
        job = job_runner().submit(preset.title, comparison_job(**preset.comparison_kwargs(), workspace=workspace()))
        st.session_state[LAUNCHED_KEY] = job.id


def recent_runs_frame(runs: list[dict]) -> pd.DataFrame:
    """The recent-runs table: one row per completed run, newest first, names as plain text."""
    return pd.DataFrame(
        {
            "run": [r["id"] for r in runs],
            "backbone": [r["backbone"] for r in runs],
            "weights": [weights_label(r["weights"]) for r in runs],
            "dataset": [dataset_label(r["dataset_name"], r["synthetic"]) for r in runs],
            "split": [r["split"] for r in runs],
            "test acc %": [r["test_acc"] for r in runs],
            "finished": [format_age(r["finished_at"]) for r in runs],
        }
    )


def feature_cache_entries(folder: Path) -> list[Path]:
    """The feature cache's entries: sharded folders with a manifest (``core.features.extract.ShardedCache``), old .npz files."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if (p.suffix == ".npz" and p.is_file()) or (p / ShardedCache.MANIFEST).is_file()
    )


def _size(entry: Path) -> int:
    return entry.stat().st_size if entry.is_file() else sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())


def workspace_summary() -> None:
    ws = workspace()
    datasets = [d for d in list_datasets(ws) if d.prepared]
    completed = list_runs(status="completed")
    entries = feature_cache_entries(ws.features_dir)
    st.subheader("Workspace")
    st.caption(f"`{ws.root}`")
    columns = st.columns(3)
    columns[0].metric("Datasets ready", len(datasets))
    columns[1].metric(
        "Cached feature sets", len(entries), help="One per (dataset, backbone, weights); reused by every later run."
    )
    columns[2].metric("Completed runs", len(completed))
    if datasets:
        st.markdown("Datasets: " + ", ".join(markdown_text(d.name) for d in datasets))
    if entries:
        st.caption(f"Feature cache: {format_bytes(sum(_size(e) for e in entries))} in `{ws.features_dir}`")
    if completed:
        st.markdown("**Recent runs**")
        st.dataframe(
            recent_runs_frame(completed[:RECENT_RUNS]),
            hide_index=True,
            column_config={"test acc %": st.column_config.NumberColumn(format="%.1f")},
        )
        st.page_link("pages/compare.py", label="Compare runs", icon=":material/compare_arrows:")
    else:
        st.info(
            "No runs yet. Start with the button below, or choose your own dataset and backbones on the Train page.",
            icon=":material/info:",
        )


def _estimate_caption(preset: ComparisonPreset) -> None:
    st.caption(
        duration_text(expected_duration(dataset=preset.dataset, backbones=list(preset.backbones), split=preset.split))
    )


def _reference_text() -> None:
    oxford = next(entry for entry in list_datasets(workspace()) if entry.key == OXFORD17_KEY)
    st.markdown(
        "DINOv2 ViT-S/14 vs ResNet-50, each with a small head on frozen features, on the Oxford 17 flowers "
        f"(official split {REFERENCE.split}, {REFERENCE.head.epochs} epochs; Oxford 17 is {oxford.state}). "
        "It runs in the background: follow it on the Train page."
    )


def ready_made_comparisons() -> None:
    """The reference comparison's button; when its files are missing, the offline demo first, then what is missing."""
    missing = files_to_fetch(dataset=REFERENCE.dataset, backbones=list(REFERENCE.backbones))
    if not missing:
        st.subheader("The reference comparison")
        _reference_text()
        _estimate_caption(REFERENCE)
        st.button(
            "Run the reference comparison",
            type="primary",
            icon=":material/play_arrow:",
            on_click=launch,
            args=(REFERENCE,),
        )
        return
    st.subheader("Offline demo: how much does pretraining matter?")
    st.markdown(
        "Synthetic Flowers (17 procedurally drawn classes, generated on this machine) with the same architecture "
        "twice: EfficientNet-Lite0 with its ImageNet weights and with random weights. Needs no network."
    )
    with_resnet = st.checkbox(
        "Also a random-weight ResNet-50 (a bigger architecture, several times slower here)", key="home_demo_resnet"
    )
    demo = OFFLINE_DEMO_RANDOM_RESNET if with_resnet else OFFLINE_DEMO
    demo_missing = files_to_fetch(dataset=demo.dataset, backbones=list(demo.backbones))
    if demo_missing:
        st.error(
            "The offline demo needs these files too:\n\n" + missing_files_markdown(demo_missing),
            icon=":material/error:",
        )
    _estimate_caption(demo)
    st.button(
        "Run the offline demo",
        type="primary",
        icon=":material/play_arrow:",
        disabled=bool(demo_missing),
        on_click=launch,
        args=(demo,),
    )
    st.subheader("The reference comparison")
    _reference_text()
    st.warning(
        "It needs files that are not in this workspace yet:\n\n"
        + missing_files_markdown(missing)
        + "\n\nA run downloads them first, which needs internet access. On an offline machine, download them "
        "elsewhere and put them in those folders, or run the offline demo above.",
        icon=":material/cloud_off:",
    )
    st.button(
        "Download and run the reference comparison",
        icon=":material/cloud_download:",
        on_click=launch,
        args=(REFERENCE,),
    )


def launched_message() -> None:
    """After a launch: its job number and where to watch it (shown once; the job itself lives in the runner)."""
    launched = st.session_state.pop(LAUNCHED_KEY, None)
    if launched is not None:
        st.success(f"Started as job {launched}.", icon=":material/rocket_launch:")
        st.page_link("pages/train.py", label="Watch its progress on the Train page", icon=":material/model_training:")
