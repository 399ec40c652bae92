"""The Home page's parts: the workspace summary, recent runs, and the ready-made comparisons with their duration.

The reference comparison (``core.probing.presets.REFERENCE``) needs two dataset files and two weights files; they
are checked on disk only (never on the network: a render must not block). When some are missing the
page names them and offers the offline demo (``core.probing.presets.OFFLINE_DEMO``: EfficientNet-Lite0 pretrained
vs random weights on Synthetic Flowers), optionally with a random ResNet-50. Every button states how long
its run should take before the click (``ui.launch.expected_duration``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from core.base.progress import format_duration
from core.base.text import markdown_text
from core.data.datasets import OXFORD17_KEY, list_datasets
from core.features.extract import ShardedCache
from core.jobs.runner import preset_job
from core.probing.presets import OFFLINE_DEMO, OFFLINE_DEMO_RANDOM_RESNET, REFERENCE, ComparisonPreset
from core.probing.pretraining import pretraining_sentence
from core.runs.naming import run_name
from ui.labels import dataset_label, format_age, format_bytes
from ui.launch import duration_text, expected_duration, files_to_fetch, missing_files_markdown
from ui.state import job_runner, list_runs, registry, show_run_warnings, user_errors, warnings_of, workspace

RECENT_RUNS = 8
LAUNCHED_KEY = "home_launched"  # session state: the job id of the last launch, shown once


def launch(preset: ComparisonPreset) -> None:
    """Queue ``preset`` in the job runner (a button callback: the message shows next to the button on the rerun)."""
    with user_errors():
        estimate = expected_duration(dataset=preset.dataset, backbones=list(preset.backbones), split=preset.split)
        job = job_runner().submit(
            preset.title, preset_job(preset, workspace=workspace()), kind="comparison", key=preset.title
        )
        st.session_state[LAUNCHED_KEY] = job.id
        if estimate is not None:
            st.session_state[f"{LAUNCHED_KEY}-estimate-{job.id}"] = estimate.seconds


def recent_runs_frame(runs: list[dict]) -> pd.DataFrame:
    """The recent-runs table: one row per completed run, newest first, named by ``core.runs.naming.run_name``."""
    return pd.DataFrame(
        {
            "run": [run_name(r) for r in runs],
            "dataset": [dataset_label(r["dataset_name"], r["synthetic"]) for r in runs],
            "check": ["warning: see below" if warnings_of(r) else "ok" for r in runs],
            "finished": [format_age(r["finished_at"]) for r in runs],
        }
    )


def feature_cache_entries(folder: Path) -> list[Path]:
    """The feature cache's entries: sharded folders with a manifest (``core.features.extract.ShardedCache``), old .npz
    files.
    """
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
    completed = list_runs(status="completed")  # on the whole training part (few-shot runs are curve points)
    counts = {few_shot: registry().count_runs(status="completed", few_shot=few_shot) for few_shot in (False, True)}
    entries = feature_cache_entries(ws.features_dir)
    st.subheader("Workspace")
    st.caption(f"`{ws.root}`")
    columns = st.columns(3)
    columns[0].metric("Datasets ready", len(datasets))
    columns[1].metric(
        "Cached feature sets", len(entries), help="One per (dataset, backbone, weights); reused by every later run."
    )
    columns[2].metric(
        "Completed runs",
        counts[False] + counts[True],
        help=f"{counts[False]} on the whole training part, {counts[True]} few-shot (points of Compare's few-shot "
        "curves); failed, cancelled and interrupted runs are not counted.",
    )
    if datasets:
        st.markdown("Datasets: " + ", ".join(markdown_text(d.name) for d in datasets))
    if entries:
        st.caption(f"Feature cache: {format_bytes(sum(_size(e) for e in entries))} in `{ws.features_dir}`")
    if completed:
        sentence = pretraining_sentence(completed)
        if sentence:
            st.markdown(f"**How much does pretraining matter?** {markdown_text(sentence)}")
        st.markdown(f"**Recent runs** (the {min(RECENT_RUNS, len(completed))} newest on the whole training part)")
        st.dataframe(
            recent_runs_frame(completed[:RECENT_RUNS]),
            hide_index=True,
            column_config={"run": st.column_config.TextColumn(width="large")},
        )
        show_run_warnings(completed[:RECENT_RUNS])
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
        launched_feedback()
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
    launched_feedback()
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


def _preset_jobs() -> list:
    titles = {preset.title for preset in (REFERENCE, OFFLINE_DEMO, OFFLINE_DEMO_RANDOM_RESNET)}
    return [job for job in job_runner().find(kinds=("comparison",)) if job.key in titles]


def _demo_progress() -> None:
    """The ready-made comparison's job, right under its button: queued or running with its progress and the time left
    of the whole job (the estimate made at launch less the time it has run), or how it ended with its runs."""
    from ui.jobs import job_card

    launched = st.session_state.get(LAUNCHED_KEY)
    jobs = [job for job in _preset_jobs() if job.active or job.id == launched]
    for job in jobs[:2]:
        if job.status == "queued":
            ahead = sum(1 for other in job_runner().jobs() if other.active and other.id < job.id)
            st.info(
                f"Job {job.id} is queued: it starts when the {ahead} job(s) ahead of it finish.",
                icon=":material/schedule:",
            )
        elif job.status in ("running", "cancelling") and job.started_at:
            estimate = st.session_state.get(f"{LAUNCHED_KEY}-estimate-{job.id}")
            if estimate:
                left = max(0.0, estimate - (time.time() - job.started_at))
                st.caption(f"Job {job.id} started; about {format_duration(left)} left (estimated at launch).")
        job_card(job)


def launched_feedback() -> None:
    """Next to the launch buttons: what happened to the click (queued or started, said truly) and the job's progress,
    redrawn live while it runs."""
    from ui.jobs import live_jobs

    live_jobs(_demo_progress, busy=lambda: any(job.active for job in _preset_jobs()))
