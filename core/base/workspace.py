"""Where Flower Probe keeps its state: one workspace folder holds everything it writes.

Layout (all created on demand)::

    <workspace>/
        datasets/      data root: downloaded and generated datasets, user folder datasets
        weights/       downloaded backbone checkpoints
        features/      cached feature arrays, one .npz per (dataset, split, backbone, weights, preprocessing)
        heads/         trained head weights (.safetensors), referenced by run records
        thumbnails/    small JPEGs for the embedding explorer
        runs.sqlite    the run registry
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WORKSPACE_ENV = "FLOWER_PROBE_WORKSPACE"
DATA_ROOT_ENV = "FLOWER_PROBE_DATA_ROOT"


class _Folder:
    """A workspace attribute naming one of its folders, ``<root>/<name>``, made when first asked for."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, workspace: Workspace | None, owner: type | None = None) -> Path | _Folder:
        if workspace is None:  # looked up on the class (introspection, monkeypatch): the attribute itself
            return self
        path = workspace.root / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Workspace:
    root: Path
    data_root: Path

    @classmethod
    def from_env(cls) -> Workspace:
        """The workspace named by ``FLOWER_PROBE_WORKSPACE`` (default ``./workspace``).

        The data root defaults to ``<workspace>/datasets``; ``FLOWER_PROBE_DATA_ROOT`` moves it, for
        users whose photos already live elsewhere.
        """
        root = Path(os.environ.get(WORKSPACE_ENV) or "workspace").expanduser().resolve()
        data_root = os.environ.get(DATA_ROOT_ENV)
        return cls(root=root, data_root=Path(data_root).expanduser().resolve() if data_root else root / "datasets")

    # The folders of the layout above, each made on first use.
    weights_dir = _Folder("weights")
    features_dir = _Folder("features")
    heads_dir = _Folder("heads")
    thumbnails_dir = _Folder("thumbnails")

    @property
    def registry_path(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / "runs.sqlite"
