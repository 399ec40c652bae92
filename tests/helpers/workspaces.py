"""Workspaces for tests of the app: naming one for the code under test, and a folder dataset (with a run on it)
written into one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from PIL import Image

from core.base.workspace import Workspace
from core.probing.experiment import ExperimentConfig, run_experiment
from core.probing.heads import HeadConfig

IMAGES_PER_CLASS = 3  # the fewest a folder class may have: one each for train, val and test


def use_workspace(monkeypatch: pytest.MonkeyPatch, root: Path) -> Workspace:
    """The workspace at ``root`` (its datasets inside it), named by FLOWER_PROBE_WORKSPACE for this test."""
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    return Workspace.from_env()


def write_folder_dataset(folder: Path, classes: Sequence[str], file_name: Callable[[int, int], str]) -> None:
    """A folder dataset at ``folder``: a subfolder per class of ``IMAGES_PER_CLASS`` 48 x 48 photos, each of its own
    colour, the ``index``-th of class ``label`` named ``file_name(label, index)``."""
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for index in range(IMAGES_PER_CLASS):
            colour = (30 * label % 256, 80 * index % 256, 120)
            Image.new("RGB", (48, 48), colour).save(folder / name / file_name(label, index))


def folder_dataset_run(
    root: Path,
    name: str,
    classes: Sequence[str],
    file_name: Callable[[int, int], str],
    *,
    epochs: int,
    unreadable: str = "",
) -> None:
    """A workspace at ``root`` with the folder dataset ``name`` (``write_folder_dataset``; ``unreadable``: the name of
    a file in the first class that is no image) and a completed efficientnet_lite0 run on it."""
    ws = Workspace(root=root, data_root=root / "datasets")
    write_folder_dataset(ws.data_root / name, classes, file_name)
    if unreadable:
        (ws.data_root / name / classes[0] / unreadable).write_bytes(b"not a jpeg at all")
    config = ExperimentConfig(dataset=f"folder:{name}", backbone="efficientnet_lite0", head=HeadConfig(epochs=epochs))
    run = run_experiment(config, workspace=ws)
    assert run["status"] == "completed" and sorted(run["class_names"]) == sorted(classes)
