"""Images a user excluded from a dataset: kept in the workspace, never by touching the image files.

One JSON file per dataset, ``<workspace>/exclusions/<dataset>.json``::

    {"dataset": "folder:roses", "excluded": {"train/tulip/img_3.jpg": {"reason": "label issue", "at": 1764578400.0}},
     "history": [<the "excluded" mapping before each change, newest last>]}

Paths are relative to the dataset folder (POSIX), so a workspace moved elsewhere keeps its exclusions.
``load_dataset`` applies them (``apply_exclusions``): an excluded image drops out of the image list, the
labels and every split, so its fingerprint changes and runs record what was left out (``Dataset.excluded``).
Including the images again, or undoing the last change, gives back the very same dataset and fingerprint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np

from core.base.errors import DatasetError
from core.base.fileio import atomic_write

EXCLUSIONS_DIRNAME = "exclusions"
MAX_HISTORY = 100  # undo steps kept per dataset; each is one small mapping


def exclusions_path(workspace, dataset_key: str) -> Path:
    """``<workspace>/exclusions/<key>.json``; the key's ``:`` and ``/`` become ``-`` and ``_`` in the file name."""
    return workspace.root / EXCLUSIONS_DIRNAME / f"{dataset_key.replace('/', '_').replace(':', '-')}.json"


def _read(workspace, dataset_key: str) -> dict:
    path = exclusions_path(workspace, dataset_key)
    if not path.exists():
        return {"dataset": dataset_key, "excluded": {}, "history": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"The exclusions file {path} cannot be read ({exc}); delete it to include every image again."
        ) from exc
    return {
        "dataset": dataset_key,
        "excluded": dict(state.get("excluded", {})),
        "history": list(state.get("history", [])),
    }


def _write(workspace, dataset_key: str, state: dict) -> None:
    path = exclusions_path(workspace, dataset_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")


def excluded_images(workspace, dataset_key: str) -> dict[str, dict]:
    """Relative path -> ``{"reason": str, "at": unix seconds}`` of every image excluded from ``dataset_key``."""
    return _read(workspace, dataset_key)["excluded"]


def _relative(path: str) -> str:
    relative = PurePosixPath(str(path).replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise DatasetError(f"paths to exclude must be relative to the dataset folder, without '..', got {str(path)!r}.")
    return relative.as_posix()


def _change(workspace, dataset_key: str, excluded: dict[str, dict], state: dict) -> dict[str, dict]:
    if excluded != state["excluded"]:
        state["history"] = (state["history"] + [state["excluded"]])[-MAX_HISTORY:]
        state["excluded"] = excluded
        _write(workspace, dataset_key, state)
    return excluded


def exclude_images(workspace, dataset_key: str, paths: Iterable[str], *, reason: str = "") -> dict[str, dict]:
    """Exclude ``paths`` (relative to the dataset folder) from later runs; returns the new exclusions.

    Already excluded paths keep their first reason. Nothing on disk but the exclusions file changes.
    """
    state = _read(workspace, dataset_key)
    excluded = dict(state["excluded"])
    now = time.time()
    for path in paths:
        excluded.setdefault(_relative(path), {"reason": str(reason), "at": now})
    return _change(workspace, dataset_key, excluded, state)


def include_images(workspace, dataset_key: str, paths: Iterable[str]) -> dict[str, dict]:
    """Take ``paths`` off the exclusion list again; returns the new exclusions."""
    state = _read(workspace, dataset_key)
    drop = {_relative(path) for path in paths}
    return _change(workspace, dataset_key, {p: v for p, v in state["excluded"].items() if p not in drop}, state)


def undo_exclusions(workspace, dataset_key: str) -> dict[str, dict]:
    """Restore the exclusions as they were before the last change; returns them.

    Raises
    ------
    DatasetError
        There is nothing to undo.
    """
    state = _read(workspace, dataset_key)
    if not state["history"]:
        raise DatasetError(f"There is no exclusion change to undo for {dataset_key}.")
    state["excluded"] = state["history"].pop()
    _write(workspace, dataset_key, state)
    return state["excluded"]


def can_undo(workspace, dataset_key: str) -> bool:
    return bool(_read(workspace, dataset_key)["history"])


def exclusions_stamp(workspace, dataset_key: str) -> tuple:
    """Changes whenever the dataset's exclusions do (for caches keyed on it)."""
    try:
        stat = exclusions_path(workspace, dataset_key).stat()
    except FileNotFoundError:
        return ()
    return (stat.st_mtime_ns, stat.st_size)


def relative_path(dataset, row: int) -> str:
    """The dataset-relative POSIX path of image ``row``: how exclusions, health reports and CSVs name images."""
    return dataset.image_paths[row].relative_to(dataset.root).as_posix()


def without_rows(dataset, drop: np.ndarray):
    """``dataset`` without the rows where ``drop`` (bool, shape (n_images,)) is True; labels and splits renumbered.

    The dropped rows' relative paths are added to ``dataset.excluded``.
    """
    keep = ~np.asarray(drop, dtype=bool)
    if keep.all():
        return dataset
    new_row = np.cumsum(keep) - 1  # old row -> new row, valid where keep
    splits = {
        split_id: {part: new_row[rows[keep[rows]]] for part, rows in parts.items()}
        for split_id, parts in dataset.splits.items()
    }
    dropped = tuple(relative_path(dataset, row) for row in np.flatnonzero(~keep))
    return replace(
        dataset,
        image_paths=tuple(p for p, k in zip(dataset.image_paths, keep) if k),
        labels=dataset.labels[keep],
        splits=splits,
        excluded=tuple(sorted(set(dataset.excluded) | set(dropped))),
    )


def apply_exclusions(dataset, workspace):
    """``dataset`` without the images excluded in ``workspace``; exclusions naming files no longer there are ignored."""
    excluded = excluded_images(workspace, dataset.key)
    if not excluded:
        return dataset
    drop = np.array([relative_path(dataset, row) in excluded for row in range(len(dataset.image_paths))], dtype=bool)
    return without_rows(dataset, drop)
