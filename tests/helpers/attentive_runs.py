"""A workspace with one attentive run, for the tests of what classifies with it (predict, Classify, export).

EfficientNet-Lite0 (pretrained, offline) on the tiny Synthetic Flowers: its patch tokens are cached (49 positions of
1280 values, fp16) and one attentive head is trained on the whole training part with a one-cell grid, in seconds.
"""

from __future__ import annotations

from pathlib import Path

from core.base.workspace import Workspace

BACKBONE = "efficientnet_lite0"


def build_attentive_workspace(root: Path, tiny_synthetic_folder: Path) -> int:
    """Fill a new workspace at ``root`` with the tiny dataset and one attentive run; returns the run's id."""
    import shutil

    from core.data.datasets import prepare_dataset, synthetic_folder
    from core.features.tokens import extract_tokens
    from core.probing.attentive import AttentiveConfig
    from core.probing.probes import ProbeConfig
    from core.probing.suite import run_probe_suite

    built = Workspace(root=root, data_root=root / "datasets")
    shutil.copytree(tiny_synthetic_folder, synthetic_folder(built))
    extract_tokens(prepare_dataset("synthetic", built), BACKBONE, workspace=built)
    config = ProbeConfig(
        attentive=AttentiveConfig(learning_rates=(1e-2,), weight_decays=(5e-4,), epochs=2, min_steps=4)
    )
    (run,) = run_probe_suite(
        dataset="synthetic",
        backbones=[BACKBONE],
        protocols=["attentive"],
        shots=[None],
        seeds=1,
        config=config,
        workspace=built,
    )
    return run["id"]
