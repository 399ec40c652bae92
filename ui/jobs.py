"""Jobs on a page: the sidebar's job list, job cards, and the one live-refresh style for views of running jobs."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from core.base.progress import STAGES, ProgressEvent, format_duration
from core.base.text import markdown_text
from core.jobs.runner import Job
from ui.auth import access_controls
from ui.charts import curves_figure
from ui.labels import format_age
from ui.state import device_label, job_runner, workspace

# How often a live view of jobs redraws itself while none of its jobs runs: so that a job started elsewhere (another
# tab, the CLI) still shows up. The views used to rerun every 1-2 s whatever happened: every open tab cost the server a
# rerun a second, and a page load in the browser bench that met one of those reruns settled ~2 s late.
IDLE_REFRESH_S = 15.0
# How often a page redraws the jobs it shows while one runs. Each redraw reruns the view on the server and re-renders it
# in the browser, both taking CPU from the job: on the 2-core reference CPU with the browser on the same machine, Home
# redrawing the offline demo's card every second (the sidebar every 2 s) made the demo 34-39 s from click to result,
# against 26 s with the page closed (bench/README.md, session 8). A progress bar's time left is as useful every 2 s.
JOB_REFRESH_S = 2.0
SIDEBAR_REFRESH_S = 5.0  # a progress bar per running job, on every page; the job's own page redraws it more often


def any_job_active(kinds: tuple[str, ...] = ()) -> bool:
    """Whether a job of one of ``kinds`` (``core.jobs.runner.JOB_KINDS``; any kind when empty) is queued or running."""
    return bool(job_runner().find(kinds=kinds, active=True))


def live_jobs(view: Callable[[], None], *, busy: Callable[[], bool], refresh_s: float = JOB_REFRESH_S) -> None:
    """Draw ``view`` in a fragment that reruns every ``refresh_s`` while ``busy()``, else every ``IDLE_REFRESH_S``.

    A fragment's interval is set when the page draws it, so when ``busy()`` changes in one of the fragment's own
    reruns the whole page reruns once: that draws the fragment again with the other interval, and shows what a
    finished job made.
    """
    was_busy = busy()
    st.fragment(_live_jobs_run, run_every=refresh_s if was_busy else IDLE_REFRESH_S)(view, busy, was_busy)


def _live_jobs_run(view: Callable[[], None], busy: Callable[[], bool], was_busy: bool) -> None:
    if busy() != was_busy:
        st.rerun()
    view()


def _sidebar_jobs() -> None:
    active = [job for job in job_runner().jobs() if job.active]
    if not active:
        st.caption("No jobs running.")
        return
    for job in active:
        fraction = job.stage.fraction if job.stage and job.status in ("running", "cancelling") else 0.0
        st.progress(fraction, text=f"{job.title} ({job.status})")


def sidebar() -> None:
    """Workspace, device and running jobs, on every page."""
    with st.sidebar:
        st.caption(f"**Workspace**  \n`{workspace().root}`")
        st.caption(f"**Device**  \n{device_label()}")
        live_jobs(_sidebar_jobs, busy=any_job_active, refresh_s=SIDEBAR_REFRESH_S)
        access_controls()


_JOB_ICONS = {
    "queued": ":material/schedule:",
    "running": ":material/autorenew:",
    "cancelling": ":material/hourglass_top:",
    "completed": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
}


def stage_text(event: ProgressEvent) -> str:
    """One line for a progress bar: what, how far, how fast."""
    name = STAGES.get(event.stage, event.stage)
    if event.stage == "download":
        return f"{name}: {event.message} ({event.fraction:.0%})"
    left = (
        f" · about {format_duration(event.seconds_left)} left"
        if event.seconds_left is not None and event.done < event.total
        else ""
    )
    if event.from_cache:
        return f"{name}: from cache"
    if event.stage == "features":
        rate = f" · {event.rate:.1f} images/s" if event.rate else ""
        return f"{name}: {event.done}/{event.total} images{rate}{left}"
    if event.stage == "train":
        return f"{name}: epoch {event.done}/{event.total}"
    return f"{name}: {event.message or f'{event.done}/{event.total}'}{left}"


def epochs_frame(epochs: list[dict]) -> pd.DataFrame:
    columns = {
        "run": "run",
        "epoch": "epoch",
        "train_loss": "train loss",
        "train_acc": "train acc %",
        "valid_loss": "valid loss",
        "valid_acc": "valid acc %",
        "saved_best": "saved best",
    }
    frame = pd.DataFrame(epochs)
    return frame[[c for c in columns if c in frame.columns]].rename(columns=columns)


@st.cache_data(show_spinner=False, max_entries=32)
def _job_curves(epochs: list[dict]):
    """The live curves of a job's epochs so far: built once per new epoch, not on every one-second refresh."""
    curves: dict[str, list[dict]] = {}
    for epoch in epochs:
        curves.setdefault(epoch["run"], []).append(epoch)
    return curves_figure(curves)


def report_lines(job: Job) -> list[str]:
    """What a finished job did, from its report (``core.jobs.history``): runs recorded, failed (with the reason),
    cancelled, interrupted; plain text, one line each, nothing for a job that made no runs."""
    report = job.report or {}
    lines = []
    if report.get("recorded"):
        lines.append(f"Recorded {len(report['recorded'])} run(s): {', '.join(f'#{i}' for i in report['recorded'])}.")
    for run_id, reason in report.get("failed", []):
        lines.append(f"Run #{run_id} failed: {reason}")
    if report.get("cancelled"):
        lines.append(f"Cancelled run(s): {', '.join(f'#{i}' for i in report['cancelled'])} (not recorded).")
    if report.get("interrupted"):
        lines.append(f"Interrupted run(s): {', '.join(f'#{i}' for i in report['interrupted'])}.")
    return lines


def compare_link(job: Job) -> str | None:
    """The Compare page's address showing the job's recorded runs (``?dataset=...&runs=...``); None without runs."""
    report = job.report or {}
    recorded = report.get("recorded") or job.run_ids
    if not recorded:
        return None
    datasets = report.get("datasets") or []
    dataset = f"dataset={datasets[0]}&" if len(datasets) == 1 else ""
    return f"/compare?{dataset}runs={','.join(str(i) for i in recorded)}"


def job_outcome(job: Job) -> None:
    """How a finished job ended, what it recorded and failed, a link to Compare with those runs, and Retry."""
    lines = report_lines(job)
    body = "  \n".join(markdown_text(line) for line in lines)
    if job.status == "failed":
        st.error(markdown_text(job.error or "failed") + (f"  \n{body}" if body else ""), icon=":material/error:")
    elif job.status == "cancelled":
        st.warning(markdown_text(job.error or "Cancelled.") + (f"  \n{body}" if body else ""), icon=":material/cancel:")
    elif body:
        st.success(body, icon=":material/check_circle:")
    elif job.run_ids:
        st.success(f"Finished: run(s) {', '.join(f'#{i}' for i in job.run_ids)}.", icon=":material/check_circle:")
    link = compare_link(job)
    row = st.container(horizontal=True)
    if link:
        row.link_button("Compare these runs", link, icon=":material/compare_arrows:")
    if job_runner().can_retry(job.id):
        row.button(
            "Retry", key=f"retry-job-{job.id}", icon=":material/replay:", on_click=job_runner().retry, args=(job.id,)
        )


def job_card(job: Job) -> None:
    """One job: status, current step, progress, live per-epoch metrics, Cancel, and the error if it failed."""
    with st.container(border=True):
        when = (
            f"finished {format_age(job.finished_at)}"
            if job.finished_at
            else f"started {format_age(job.started_at)}"
            if job.started_at
            else f"queued {format_age(job.created_at)}"
        )
        st.markdown(
            f"{_JOB_ICONS.get(job.status, '')} **Job {job.id}: {markdown_text(job.title)}** · {job.status} · {when}"
        )
        if job.active:
            if job.current:
                st.caption(f"Now: {markdown_text(job.current)}")
            if job.status in ("running", "cancelling") and job.stage is not None:
                st.progress(job.stage.fraction, text=markdown_text(stage_text(job.stage)))
            if job.run_ids:  # results land run by run: each can be looked at while the rest of the job runs
                row = st.container(horizontal=True, vertical_alignment="center")
                row.caption(f"Recorded so far: {', '.join(f'#{i}' for i in job.run_ids)}")
                row.link_button("Compare the runs so far", compare_link(job), icon=":material/compare_arrows:")
            cancelling = job.status == "cancelling"
            st.button(
                "Cancelling…" if cancelling else "Cancel",
                key=f"cancel-job-{job.id}",
                icon=":material/stop_circle:",
                disabled=cancelling,
                on_click=job_runner().cancel,
                args=(job.id,),
            )
        else:
            job_outcome(job)
        if job.epochs:
            if job.active and job.stage is not None and job.stage.stage == "train":
                st.plotly_chart(_job_curves(job.epochs), key=f"job-curves-{job.id}", config={"displayModeBar": False})
                st.dataframe(epochs_frame(job.epochs), hide_index=True, height=min(400, 38 + 35 * len(job.epochs)))
            elif job.active:
                # Live curves only while a head trains: redrawn at every refresh through a whole extraction they cost
                # the browser a plotly.js load and a redraw each time, CPU the extraction needs on a small machine.
                st.caption(f"{len(job.epochs)} epochs so far: their curves show while a head trains and at the end.")
            else:
                with st.expander(f"Per-epoch metrics ({len(job.epochs)} epochs)"):
                    st.dataframe(epochs_frame(job.epochs), hide_index=True)
