"""The engine end to end on tiny real data: feature cache, reproducibility, killed-run bookkeeping."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from core.backbones.resolved import ResolvedBackbone
from core.data.datasets import load_dataset
from core.features.extract import extract_features
from core.probing.experiment import ExperimentConfig, run_experiment
from core.probing.heads import HeadConfig
from core.runs.registry import RunRegistry


def _counting_forwards(monkeypatch) -> list[int]:
    calls = [0]
    real_build = ResolvedBackbone.build

    def build(self, **kwargs):
        model = real_build(self, **kwargs)
        model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        return model

    monkeypatch.setattr(ResolvedBackbone, "build", build)
    return calls


def _few_images(workspace, tiny_synthetic_folder, *, classes: int = 2, per_class: int = 3) -> str:
    """A folder dataset of ``classes`` x ``per_class`` tiny photos (the fewest a split allows): cheap to extract."""
    for folder in sorted((tiny_synthetic_folder / "train").iterdir())[:classes]:
        (workspace.data_root / "few" / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:per_class]:
            shutil.copy(image, workspace.data_root / "few" / folder.name / image.name)
    return "folder:few"


def test_feature_cache_runs_zero_forwards_on_repeat(workspace, tiny_synthetic_folder, monkeypatch):
    calls = _counting_forwards(monkeypatch)
    dataset = load_dataset(_few_images(workspace, tiny_synthetic_folder), workspace)
    first = extract_features(dataset, "efficientnet_lite0", workspace=workspace, weights="random", num_workers=0)
    assert calls[0] > 0 and not first.from_cache
    assert first.features.shape == (len(dataset.image_paths), 1280)
    calls[0] = 0
    again = extract_features(dataset, "efficientnet_lite0", workspace=workspace, weights="random", num_workers=0)
    assert calls[0] == 0 and again.from_cache
    np.testing.assert_array_equal(first.features, again.features)


def _without_run_id(epochs: list[dict]) -> list[dict]:
    return [{key: value for key, value in epoch.items() if key != "run_id"} for epoch in epochs]


def test_run_is_reproducible_from_its_seed_and_recorded(populated_copy):
    # Cached features (populated_copy): what is reproduced here is the head's training from its seed.
    config = ExperimentConfig(dataset="synthetic", backbone="efficientnet_lite0", head=HeadConfig(epochs=3, seed=7))
    a = run_experiment(config, workspace=populated_copy)
    b = run_experiment(config, workspace=populated_copy)
    assert a["status"] == b["status"] == "completed" and a["id"] != b["id"]
    assert (a["test_acc"], a["test_loss"], a["best_epoch"]) == (b["test_acc"], b["test_loss"], b["best_epoch"])
    registry = RunRegistry(populated_copy.registry_path)
    epochs = _without_run_id(registry.epochs(a["id"]))
    assert len(epochs) == 3 and epochs == _without_run_id(registry.epochs(b["id"]))
    # The record carries what is needed to reproduce it.
    assert a["seed"] == 7 and a["config"]["head"]["seed"] == 7 and a["versions"]["torch"]
    assert a["device"] and a["precision"] and a["timings"]["train_s"] >= 0
    # Accuracy is plain top-1 over the whole test part, recomputed from the stored predictions.
    predictions = registry.predictions(a["id"])
    dataset = load_dataset("synthetic", populated_copy)
    assert len(predictions) == len(dataset.split("1")["test"])
    assert a["test_acc"] == pytest.approx(100 * np.mean([p["label"] == p["predicted"] for p in predictions]))


def test_failure_midway_is_recorded_as_failed_not_success(populated_copy, monkeypatch):
    import core.probing.probes as probes  # run_experiment trains the reference head through probes.mlp_probe

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(probes, "train_head", explode)
    with pytest.raises(RuntimeError):
        run_experiment(ExperimentConfig(dataset="synthetic", backbone="efficientnet_lite0"), workspace=populated_copy)
    run = RunRegistry(populated_copy.registry_path).list_runs()[0]
    assert run["status"] == "failed" and "disk on fire" in run["error"] and run["test_acc"] is None


def test_decode_workers_stay_out_of_a_small_cpus_way_but_feed_a_gpu(monkeypatch):
    from core.features.extract import default_num_workers

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_num_workers(torch.device("cpu")) == 0  # the model uses both cores; decode in its process
    assert default_num_workers(torch.device("cuda")) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert default_num_workers(torch.device("cpu")) == 4
    assert default_num_workers(torch.device("cuda")) == 8


def test_cli_standardise_flag_reaches_the_run_record(populated_copy, capsys):
    from core.__main__ import main

    args = ["compare", "--dataset", "synthetic", "--backbones", "efficientnet_lite0", "--epochs", "1"]
    assert main(args) == 0 and main([*args, "--standardise"]) == 0
    plain, standardised = reversed(RunRegistry(populated_copy.registry_path).list_runs(status="completed")[:2])
    assert (plain["config"]["head"]["standardise"], standardised["config"]["head"]["standardise"]) == (False, True)
