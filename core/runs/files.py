"""Where a run's files are: its cached features, its trained head and its test photos.

A run records its feature cache and its head relative to the workspace (``features/<file>.npz``,
``heads/run-<id>.safetensors``) and each test photo relative to its dataset's folder
(``train/<class>/<file>.jpg``), so a workspace copied or moved elsewhere (``cp -r``, another disk,
another computer) keeps every run working. ``stored_path`` makes that form; ``RunFiles`` is the one
way back from a run record to the files, for the engine, the CLI and every page.

Runs recorded before held absolute paths, and are still read: the file at the same place inside this
workspace (the same name under ``features/`` or ``heads/``, the same path below the dataset's folder
for a photo) when there is one, otherwise the absolute path as it was recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from core.base.fileio import contained_path
from core.base.workspace import Workspace
from core.data.datasets import dataset_folder


def stored_path(path: str | os.PathLike, *, base: str | os.PathLike) -> str:
    """``path`` as a run records it: relative to ``base`` with ``/`` separators when inside it, else absolute."""
    resolved, root = Path(path).resolve(), Path(base).resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)


def head_file(workspace: Workspace, run_id: int) -> Path:
    """Where run ``run_id``'s head is written: ``heads/run-<id>.safetensors`` in ``workspace``.

    The one place that names a head file; a run records it (``stored_path``) and ``RunFiles.head`` reads it back.
    """
    return workspace.heads_dir / f"run-{int(run_id)}.safetensors"


def _legacy(recorded: Path, moved: Path) -> Path:
    # The copy inside this workspace wins: the recorded place may be the old workspace, still there after a
    # ``cp -r`` but no longer this workspace's to read (it may be deleted or changed at any time).
    return moved if moved.exists() else recorded


@dataclass(frozen=True)
class RunFiles:
    """The files of run record ``run`` (a ``RunRegistry`` row) in ``workspace``.

    ``features`` and ``head`` are None for a run that recorded none (it did not complete); a path
    is returned whether or not the file still exists, so the caller can name it in its message.
    """

    run: dict
    workspace: Workspace

    @property
    def features(self) -> Path | None:
        """The run's feature cache file (``core.features.extract.read_features`` reads it)."""
        return self._workspace_file(self.run.get("features_path"), self.workspace.features_dir)

    @property
    def head(self) -> Path | None:
        """The run's head weights (safetensors)."""
        return self._workspace_file(self.run.get("head_path"), self.workspace.heads_dir)

    def _workspace_file(self, recorded: str | None, folder: Path) -> Path | None:
        if not recorded:
            return None
        path = Path(recorded)
        if not path.is_absolute():
            return contained_path(self.workspace.root, path)
        return _legacy(path, folder / path.name)  # features and heads are written flat in their folder

    @cached_property
    def dataset_root(self) -> Path:
        """The folder of the run's dataset in this workspace, which its photos are recorded relative to."""
        return dataset_folder(self.run["dataset_key"], self.workspace)

    def image(self, recorded: str) -> Path:
        """The photo a run recorded as ``recorded`` (a predictions row's ``path``)."""
        path = Path(recorded)
        if not path.is_absolute():
            return contained_path(self.dataset_root, path)
        # An old absolute record: the part below the dataset's folder (found by the folder's own path under
        # the data root, e.g. ``synthetic-flowers`` or ``oxford17``), placed under this workspace's copy of it.
        root, data_root = self.dataset_root, self.workspace.data_root.resolve()
        anchor = root.relative_to(data_root).parts if root.is_relative_to(data_root) else (root.name,)
        parts = path.parts
        starts = [i for i in range(len(parts) - len(anchor)) if parts[i : i + len(anchor)] == anchor]
        return _legacy(path, root.joinpath(*parts[starts[-1] + len(anchor) :])) if starts else path

    def images(self, recorded: list[str]) -> list[Path]:
        """``image`` of each recorded path, in order."""
        return [self.image(path) for path in recorded]
