"""One name per run (core.runs.naming), the user's names, tags and deletions, and the sanity warnings of a run
(core.runs.sanity): a random-weight EfficientNet-Lite0's collapsed features are said, a pretrained one's are not."""

from __future__ import annotations

import numpy as np
import pytest

from core.base.errors import FlowerProbeError
from core.probing.heads import HeadConfig
from core.runs.files import RunFiles
from core.runs.naming import run_name
from core.runs.registry import RunRegistry
from core.runs.sanity import default_runs, feature_stats, predicted_share, run_warnings


def _run(**overrides) -> dict:
    run = {
        "id": 12,
        "backbone": "efficientnet_lite0",
        "weights": "random",
        "features": "gap",
        "protocol": "logreg",
        "shots": None,
        "split": "1",
        "test_acc": 75.04,
        "status": "completed",
        "config": {"head": {"head": "linear", "standardise": True}},
    }
    return {**run, **overrides}


def test_a_run_name_says_everything_that_tells_runs_apart():
    name = run_name(_run())
    assert name == (
        "#12 efficientnet_lite0 · random weights · gap standardised · logistic regression · all shots · split 1 · "
        "75.0 % test"
    )
    # Each field changes the name: runs that differ in any of them never read alike.
    variants = [
        _run(weights="pretrained"),
        _run(features="cls"),
        _run(protocol="knn"),
        _run(shots=5),
        _run(split="2"),
        _run(test_acc=44.4),
        _run(config={"head": {"head": "linear"}}),
        _run(weights="/a/one.pth"),
    ]
    names = {run_name(run) for run in variants} | {name}
    assert len(names) == len(variants) + 1
    assert run_name(_run(title="best so far", tags=["demo", "cpu"])) == f"best so far ({name}) [demo, cpu]"
    assert run_name(_run(test_acc=None, status="failed")).endswith("· failed")


def test_runs_are_renamed_tagged_and_deleted_keeping_feature_caches(populated_copy):
    registry = RunRegistry(populated_copy.registry_path)
    runs = registry.list_runs(status="completed")
    first, second = runs[0], runs[1]
    registry.rename_run(first["id"], title="  my run  ")
    registry.set_tags(first["id"], tags=["a", " b", "a", ""])
    renamed = registry.get_run(first["id"])
    assert renamed["title"] == "my run" and renamed["tags"] == ["a", "b"]
    assert run_name(renamed).startswith("my run (#")
    registry.rename_run(first["id"], title="")
    assert registry.get_run(first["id"])["title"] is None
    with pytest.raises(FlowerProbeError, match="run_id must be a recorded run"):
        registry.rename_run(9999, title="x")
    with pytest.raises(FlowerProbeError, match="tags must be"):
        registry.set_tags(first["id"], tags="a,b")

    files = RunFiles(second, populated_copy)
    assert files.head.is_file() and files.features.exists()
    removed = registry.delete_runs([second["id"]], workspace_root=populated_copy.root)
    assert removed == [second["head_path"]] and not files.head.exists()
    assert files.features.exists()  # the feature cache stays for other runs
    assert registry.predictions(second["id"]) == [] and registry.epochs(second["id"]) == []
    with pytest.raises(FlowerProbeError, match="There is no run"):
        registry.get_run(second["id"])
    assert registry.count_runs(status="completed") == len(runs) - 1


def test_predicted_share_and_feature_stats_against_numpy():
    confusion = np.array([[0, 5, 0], [0, 4, 1], [0, 5, 0]])
    assert predicted_share(confusion) == (1, pytest.approx(14 / 15))
    x = np.random.default_rng(0).normal(size=(50, 8))
    stats = feature_stats(x)
    assert stats["mean_norm"] == pytest.approx(np.linalg.norm(x, axis=1).mean())
    assert stats["relative_spread"] == pytest.approx(x.var(axis=0).sum() / (np.linalg.norm(x, axis=1) ** 2).mean())
    assert feature_stats(np.ones((5, 3)))["relative_spread"] == 0.0


def test_the_collapsed_warning_shows_on_a_random_weight_run_and_not_on_a_pretrained_one(populated_copy):
    from core.probing.experiment import run_comparison

    records = run_comparison(
        dataset="synthetic",
        backbones=["efficientnet_lite0", "efficientnet_lite0@random"],
        head=HeadConfig(epochs=2),
        workspace=populated_copy,
    )
    pretrained, random = records
    assert random["weights"] == "random" and pretrained["weights"] == "pretrained"
    warned = run_warnings(random, populated_copy)
    assert "collapsed" in {w.kind for w in warned}
    text = next(w.text for w in warned if w.kind == "collapsed")
    assert "efficientnet_lite0 (random weights)" in text and "standardise" in text and "logistic regression" in text
    # The figure it quotes is the cache's own: an independent numpy computation of the mean norm agrees.
    from core.features.extract import read_features

    features = read_features(RunFiles(random, populated_copy).features).features
    assert np.linalg.norm(features.astype(np.float64), axis=1).mean() < 1e-3
    assert run_warnings(pretrained, populated_copy) == []


def test_default_runs_pick_the_best_on_validation_and_put_one_class_runs_last():
    def run(run_id, backbone, valid, confusion):
        return _run(id=run_id, backbone=backbone, metrics={"valid_acc": valid}, confusion=confusion, weights="random")

    good, skewed = [[3, 1], [1, 3]], [[4, 0], [4, 0]]
    runs = [run(4, "a", 99.0, skewed), run(3, "a", 60.0, good), run(2, "a", 70.0, good), run(1, "b", 10.0, skewed)]
    assert [r["id"] for r in default_runs(runs)] == [1, 2]  # "b" has only a one-class run: it still has a default
