"""Streamlit helpers shared by every page: cached engine objects, the sidebar, error display.

``st.cache_resource`` holds one ``JobRunner`` and one ``RunRegistry`` per server process, shared by
every browser session, so a teammate's page sees the job someone else launched.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from core.errors import FlowerProbeError
from core.features import device_name, select_device
from core.jobs import JobRunner
from core.runs import RunRegistry
from core.workspace import Workspace


def workspace() -> Workspace:
    return Workspace.from_env()


@st.cache_resource(show_spinner=False)
def job_runner() -> JobRunner:
    return JobRunner()


@st.cache_resource(show_spinner=False)
def _registry(path: str) -> RunRegistry:
    return RunRegistry(path)


def registry() -> RunRegistry:
    return _registry(str(workspace().registry_path))


@st.cache_resource(show_spinner=False)
def device_label() -> str:
    return device_name(select_device("auto"))


@contextmanager
def user_errors() -> Iterator[None]:
    """Show a FlowerProbeError as a one-line message instead of a traceback; the page carries on."""
    try:
        yield
    except FlowerProbeError as exc:
        st.error(str(exc), icon=":material/error:")


def format_age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


@st.fragment(run_every=2.0)
def _sidebar_jobs() -> None:
    active = [job for job in job_runner().jobs() if job.active]
    if not active:
        st.caption("No jobs running.")
        return
    for job in active:
        fraction = job.stage.fraction if job.stage and job.status == "running" else 0.0
        st.progress(fraction, text=f"{job.title} ({job.status})")


def sidebar() -> None:
    """Workspace, device and running jobs, on every page."""
    with st.sidebar:
        st.caption(f"**Workspace**  \n`{workspace().root}`")
        st.caption(f"**Device**  \n{device_label()}")
        _sidebar_jobs()
