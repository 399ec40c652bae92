"""Cached engine objects and cached reads, shared by every page and every browser session.

``st.cache_resource`` holds one ``JobRunner`` and one ``RunRegistry`` per server process, so a teammate's page
sees the job someone else launched. Reads that pages repeat on every rerun (run lists, predictions, datasets,
thumbnails) go through ``st.cache_data`` keyed on what would change them (the registry file's size and mtime,
run ids, folder mtimes), so a page renders fast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import streamlit as st

from core.base.errors import FlowerProbeError
from core.base.text import markdown_text
from core.base.workspace import Workspace
from core.data.datasets import (
    Dataset,
    load_dataset,
)
from core.data.exclusions import exclusions_stamp
from core.data.images import load_image, placeholder_image, thumbnail_bytes
from core.features.extract import device_name, select_device
from core.jobs.runner import JOB_COUNTER_FILENAME, JobRunner
from core.runs.files import RunFiles
from core.runs.registry import RunRegistry


def workspace() -> Workspace:
    return Workspace.from_env()


@st.cache_resource(show_spinner=False)
def job_runner() -> JobRunner:
    # The counter file keeps job ids growing across server restarts, as run ids do; the registry keeps each job's
    # history and report (core.jobs.history), so past jobs still say what they did after a restart.
    return JobRunner(counter_path=workspace().root / JOB_COUNTER_FILENAME, registry_path=workspace().registry_path)


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
        st.error(markdown_text(str(exc)), icon=":material/error:")


def registry_stamp() -> tuple:
    """Changes whenever the registry is written: WAL mode writes the -wal file, checkpoints the main file."""
    path = workspace().registry_path
    stamp = []
    for file in (path, path.with_name(path.name + "-wal")):
        try:
            stat = file.stat()
            stamp.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)


@st.cache_data(show_spinner=False, max_entries=16)
def _list_runs(path: str, stamp: tuple) -> list[dict]:
    # Few-shot runs (a probe suite makes a hundred per backbone, without heads) are points of Compare's few-shot
    # curves (ui.compare reads them itself), not runs to pick on a page.
    return _registry(path).list_runs(few_shot=False)


def list_runs(*, status: str | None = None) -> list[dict]:
    """Runs of the workspace, newest first; re-read only when the registry changed."""
    runs = _list_runs(str(workspace().registry_path), registry_stamp())
    return [run for run in runs if status is None or run["status"] == status]


@st.cache_data(show_spinner=False, max_entries=256)
def _run_rows(path: str, run_id: int, created_at: float, table: str) -> list[dict]:
    registry = _registry(path)
    return registry.epochs(run_id) if table == "epochs" else registry.predictions(run_id)


def run_epochs(run: dict) -> list[dict]:
    """Per-epoch metrics of a run (fixed once it completed, so cached by id)."""
    return _run_rows(str(workspace().registry_path), run["id"], run["created_at"], "epochs")


def run_predictions(run: dict) -> pd.DataFrame:
    """Per-image test predictions of a run: row, path (the photo's file in this workspace), label, predicted,
    confidence, probabilities."""
    ws = workspace()
    rows = _run_rows(str(ws.registry_path), run["id"], run["created_at"], "predictions")
    frame = pd.DataFrame(rows, columns=["run_id", "row", "path", "label", "predicted", "confidence", "probabilities"])
    frame["path"] = _photos(str(ws.registry_path), str(ws.data_root), run["id"], run["created_at"], run)
    return frame


@st.cache_data(show_spinner=False, max_entries=256)
def _photos(path: str, data_root: str, run_id: int, created_at: float, _run: dict) -> list[str]:
    """Each stored prediction's photo, located in this workspace; cached: locating resolves every path (symlinks)."""
    stored = [row["path"] for row in _run_rows(path, run_id, created_at, "predictions")]
    return [str(photo) for photo in run_files(_run).images(stored)]


def run_files(run: dict) -> RunFiles:
    """Where a run's features, head and photos are in this workspace (``core.runs.files``; also after a move)."""
    return RunFiles(run, workspace())


def _tree_stamp(folder: Path, depth: int) -> tuple:
    """Modification times of ``folder`` and its subfolders ``depth`` levels down.

    Adding or removing an image changes one.
    """
    stamp = []
    pending = [(folder, 0)]
    while pending:
        current, level = pending.pop()
        try:
            stamp.append((str(current), current.stat().st_mtime_ns))
            if level < depth:
                with os.scandir(current) as entries:
                    pending.extend((Path(e.path), level + 1) for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return tuple(sorted(stamp))


@st.cache_data(show_spinner=False, max_entries=16)
def _load_dataset(key: str, root: str, data_root: str, stamp: tuple) -> Dataset:
    return load_dataset(key, Workspace(root=Path(root), data_root=Path(data_root)))


def cached_dataset(key: str) -> Dataset:
    """``core.data.datasets.load_dataset``, re-read when a folder under the data root changes.

    Raises FlowerProbeError.
    """
    ws = workspace()
    # Depth 3 reaches <data root>/<dataset>/<train|val|test>/<class>, the deepest layout a dataset has.
    # The exclusions file's stamp too: excluding an image changes the dataset (core.data.exclusions).
    return _load_dataset(
        key, str(ws.root), str(ws.data_root), _tree_stamp(ws.data_root, 3) + (exclusions_stamp(ws, key),)
    )


@st.cache_data(show_spinner=False, max_entries=4096)
def _thumbnail(path: str, size: int, mtime_ns: int) -> tuple[bytes, bool]:
    try:
        image = load_image(path, draft_size=size * 2)
    except (FlowerProbeError, OSError):
        return thumbnail_bytes(placeholder_image(size), size=size, format="JPEG"), False
    return thumbnail_bytes(image, size=size, format="JPEG", quality=80), True


def thumbnail(path: str | os.PathLike, *, size: int = 96) -> tuple[bytes, bool]:
    """A small JPEG of the image at ``path`` and whether it could be read (else it is the placeholder)."""
    try:
        mtime_ns = os.stat(path).st_mtime_ns
    except OSError:
        mtime_ns = 0
    return _thumbnail(str(path), size, mtime_ns)


# Gallery photos travel inline, as data URLs in one HTML element, rather than as ``st.image`` media files: the
# browser fetched every st.image photo with a request of its own after the script had ended, and the Dataset
# page's 102 sample photos took ~0.6 s of requests in Chromium on an idle 2-core machine (python -m bench --only
# browser). Inline, a 96 px photo is ~3 kB of the page's message and costs no request.


@st.cache_data(show_spinner=False, max_entries=1024)
def _run_warnings(run_id: int, stamp: tuple, root: str, _run: dict, _workspace: Workspace) -> list[str]:
    from core.runs.sanity import run_warnings

    return [w.text for w in run_warnings(_run, _workspace)]


def warnings_of(run: dict) -> list[str]:
    """``core.runs.sanity.run_warnings`` of a completed run (cause and fix, plain text); cached per run and registry
    state (the feature check reads the run's feature cache once)."""
    if run.get("status", "completed") != "completed":
        return []
    ws = workspace()
    return _run_warnings(run["id"], (run.get("finished_at"), run.get("features_path")), str(ws.root), run, ws)


def show_run_warnings(runs: list[dict]) -> None:
    """One warning box per distinct warning of ``runs`` (the same collapsed features warn once), naming the runs."""
    seen: dict[str, list[int]] = {}
    for run in runs:
        for text in warnings_of(run):
            seen.setdefault(text, []).append(run["id"])
    for text in seen:
        st.warning(markdown_text(text), icon=":material/warning:")
