"""The engine end to end on tiny real data: feature cache, reproducibility, killed-run bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import features as features_module
from core.datasets import load_dataset
from core.experiment import ExperimentConfig, run_experiment
from core.features import extract_features
from core.runs import RunRegistry
from core.training import HeadConfig


def _counting_forwards(monkeypatch) -> list[int]:
    calls = [0]
    real_build = features_module.build_backbone

    def build(*args, **kwargs):
        model, source = real_build(*args, **kwargs)
        model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
        return model, source

    monkeypatch.setattr(features_module, "build_backbone", build)
    return calls


def test_feature_cache_runs_zero_forwards_on_repeat(tiny_workspace, monkeypatch):
    calls = _counting_forwards(monkeypatch)
    dataset = load_dataset("synthetic", tiny_workspace)
    first = extract_features(dataset, "efficientnet_lite0", workspace=tiny_workspace, weights="random", num_workers=0)
    assert calls[0] > 0 and not first.from_cache
    assert first.features.shape == (len(dataset.image_paths), 1280)
    calls[0] = 0
    again = extract_features(dataset, "efficientnet_lite0", workspace=tiny_workspace, weights="random", num_workers=0)
    assert calls[0] == 0 and again.from_cache
    np.testing.assert_array_equal(first.features, again.features)


def test_run_is_reproducible_from_its_seed_and_recorded(tiny_workspace):
    config = ExperimentConfig(dataset="synthetic", backbone="efficientnet_lite0", weights="random", head=HeadConfig(epochs=3, seed=7))
    a = run_experiment(config, workspace=tiny_workspace)
    b = run_experiment(config, workspace=tiny_workspace)
    assert a["status"] == b["status"] == "completed"
    assert (a["test_acc"], a["test_loss"], a["best_epoch"]) == (b["test_acc"], b["test_loss"], b["best_epoch"])
    registry = RunRegistry(tiny_workspace.registry_path)
    assert registry.epochs(a["id"]) == [{**e, "run_id": a["id"]} for e in registry.epochs(b["id"])] or \
        [{k: v for k, v in e.items() if k != "run_id"} for e in registry.epochs(a["id"])] == [{k: v for k, v in e.items() if k != "run_id"} for e in registry.epochs(b["id"])]
    # The record carries what is needed to reproduce it.
    assert a["seed"] == 7 and a["config"]["head"]["seed"] == 7 and a["versions"]["torch"]
    assert a["device"] and a["precision"] and a["timings"]["train_s"] >= 0
    # Accuracy is plain top-1 over the whole test part, recomputed from the stored predictions.
    predictions = registry.predictions(a["id"])
    dataset = load_dataset("synthetic", tiny_workspace)
    assert len(predictions) == len(dataset.split("1")["test"])
    assert a["test_acc"] == pytest.approx(100 * np.mean([p["label"] == p["predicted"] for p in predictions]))


def test_failure_midway_is_recorded_as_failed_not_success(tiny_workspace, monkeypatch):
    import core.experiment as experiment

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(experiment, "train_head", explode)
    with pytest.raises(RuntimeError):
        run_experiment(ExperimentConfig(dataset="synthetic", backbone="efficientnet_lite0", weights="random"), workspace=tiny_workspace)
    run = RunRegistry(tiny_workspace.registry_path).list_runs()[0]
    assert run["status"] == "failed" and "disk on fire" in run["error"] and run["test_acc"] is None


def test_decode_workers_stay_out_of_a_small_cpus_way_but_feed_a_gpu(monkeypatch):
    from core.features import default_num_workers

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_num_workers(torch.device("cpu")) == 0  # the model uses both cores; decode in its process
    assert default_num_workers(torch.device("cuda")) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert default_num_workers(torch.device("cpu")) == 4
    assert default_num_workers(torch.device("cuda")) == 8


def test_cli_standardise_flag_reaches_the_run_record(tiny_workspace, capsys):
    from core.__main__ import main

    args = ["compare", "--dataset", "synthetic", "--backbones", "efficientnet_lite0", "--random-weights-for", "efficientnet_lite0", "--epochs", "1"]
    assert main(args) == 0 and main([*args, "--standardise"]) == 0
    runs = RunRegistry(tiny_workspace.registry_path).list_runs(status="completed")
    assert sorted(run["config"]["head"]["standardise"] for run in runs) == [False, True]
