"""Shared fixtures: an isolated workspace per test, and a tiny generated dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores: keep torch from oversubscribing when pytest and DataLoader workers share them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Feature extraction on PyTorch unless a test studies runtimes (tests/core/features/test_runtime.py passes its own):
# the engine's "auto" would export an ONNX graph and time both runtimes in every session that extracts.
os.environ.setdefault("FLOWER_PROBE_RUNTIME", "torch")

from core.base.workspace import Workspace  # noqa: E402


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    return Workspace.from_env()


@pytest.fixture(scope="session")
def tiny_synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic Flowers at 8 images a class and 64 px: real images, generated once per session."""
    from core.data.synthetic import generate_synthetic_flowers

    return generate_synthetic_flowers(
        tmp_path_factory.mktemp("tiny") / "synthetic-flowers", seed=0, images_per_class=8, image_size=64
    )


@pytest.fixture
def tiny_workspace(workspace: Workspace, tiny_synthetic_folder: Path) -> Workspace:
    """A workspace whose 'synthetic' dataset is the tiny one (a copy, so tests may modify it)."""
    import shutil

    from core.data.datasets import synthetic_folder

    shutil.copytree(tiny_synthetic_folder, synthetic_folder(workspace))
    return workspace


@pytest.fixture(scope="session")
def populated_root(tmp_path_factory: pytest.TempPathFactory, tiny_synthetic_folder: Path) -> Path:
    """A workspace with real runs: tiny Synthetic Flowers, efficientnet_lite0 (pretrained, offline) and
    resnet50 (random weights), 2 epochs each. Built once per session; use ``populated_workspace``."""
    import shutil

    from core.data.datasets import synthetic_folder
    from core.probing.experiment import run_comparison
    from core.probing.heads import HeadConfig

    root = tmp_path_factory.mktemp("populated") / "workspace"
    built = Workspace(root=root, data_root=root / "datasets")
    shutil.copytree(tiny_synthetic_folder, synthetic_folder(built))
    run_comparison(
        dataset="synthetic",
        backbones=["efficientnet_lite0", "resnet50"],
        random_weights_for=("resnet50",),
        head=HeadConfig(epochs=2),
        workspace=built,
    )
    return root


@pytest.fixture
def populated_copy(populated_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """A private copy of the populated workspace (the test may change it), named by FLOWER_PROBE_WORKSPACE.

    Its features are cached (efficientnet_lite0 pretrained, resnet50 random), so a run of either trains
    only a head: engine tests on runs need no extraction of their own."""
    import shutil

    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root, ignore=shutil.ignore_patterns("thumbnails"))
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    return Workspace.from_env()


@pytest.fixture
def populated_workspace(populated_root: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The session's populated workspace, named by FLOWER_PROBE_WORKSPACE for this test. Read-only by convention."""
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(populated_root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    return Workspace.from_env()
