"""core.probing.probes and core.probing.suite: each probe against an independent computation, the reference MLP
unchanged,
few-shot draws, bad input refused before anything is recorded, and a small suite recorded end to end."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from core.base.errors import FlowerProbeError
from core.base.workspace import Workspace
from core.probing.heads import HeadConfig, train_head
from core.probing.probes import (
    KNN_TEMPERATURE,
    LOGREG_C_GRID,
    PROTOCOLS,
    LinearConfig,
    LogregConfig,
    ProbeConfig,
    cross_entropy_gradient,
    knn_probe,
    knn_votes,
    linear_probe,
    logreg_probe,
    mlp_probe,
    ncm_probe,
    run_probe,
    top_k_accuracy,
)
from core.probing.suite import (
    check_shots,
    draw_shots,
    fewshot_points,
    fewshot_table,
    parse_shots,
    plan_suite,
    protocols_table,
    result_rows,
    run_probe_suite,
)
from core.runs.registry import RunRegistry

CLASSES = 4


def clusters(n: int, dim: int = 8, *, seed: int, noise: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    centres = np.random.default_rng(99).normal(size=(CLASSES, dim)) * 2
    return (centres[labels] + rng.normal(scale=noise, size=(n, dim))).astype(np.float32), labels


@pytest.fixture(scope="module")
def parts():
    return clusters(40, seed=0), clusters(24, seed=1), clusters(24, seed=2)


# ----------------------------------------------------------------------------------------------- k-NN


def direct_knn_vote(train_x, train_y, query, k, temperature):
    """One query at a time, the way DINOv2's k-NN is described: cosine, top k, weight exp(s / T), sum per class."""
    unit = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    votes = []
    for q in query:
        similarity = unit @ (q / np.linalg.norm(q))
        nearest = np.argsort(-similarity)[:k]
        vote = np.zeros(CLASSES)
        for index in nearest:
            vote[train_y[index]] += np.exp(similarity[index] / temperature)
        votes.append(vote / vote.sum())
    return np.array(votes)


def test_knn_matches_a_direct_numpy_vote(parts):
    (train_x, train_y), valid, test = parts
    ks = (1, 5, 10, 40)
    votes = knn_votes(train_x, train_y, test[0], num_classes=CLASSES, ks=ks, temperature=KNN_TEMPERATURE)
    for k in ks:
        np.testing.assert_allclose(
            votes[k], direct_knn_vote(train_x, train_y, test[0], k, KNN_TEMPERATURE), rtol=1e-5, atol=1e-7
        )  # float32 features
    result = knn_probe((train_x, train_y), valid, test, num_classes=CLASSES, ks=ks)
    valid_accuracy = {
        k: np.mean(direct_knn_vote(train_x, train_y, valid[0], k, KNN_TEMPERATURE).argmax(1) == valid[1]) for k in ks
    }
    best = max(sorted(ks), key=lambda k: (valid_accuracy[k], -k))
    assert result.hyperparameter == {"name": "k", "value": best}
    expected = direct_knn_vote(train_x, train_y, test[0], best, KNN_TEMPERATURE).argmax(1)
    np.testing.assert_array_equal(result.predictions, expected)
    assert result.test.accuracy == pytest.approx(np.mean(expected == test[1]) * 100)


def test_knn_refuses_k_larger_than_the_training_set(parts):
    with pytest.raises(
        FlowerProbeError, match=r"k must be at most the training set's size \(40 images\), got k = \[200\]"
    ):
        knn_probe(*parts, num_classes=CLASSES, ks=(10, 200))


def test_the_suite_keeps_the_knn_grid_to_what_fits(parts):
    (train_x, train_y), valid, test = parts
    few = (train_x[:8], train_y[:8])  # 2 per class: no k of {10, 20, 100, 200} fits, so k = the whole set
    assert run_probe("knn", few, valid, test, num_classes=CLASSES).hyperparameter["value"] == 8
    assert run_probe("knn", (train_x, train_y), valid, test, num_classes=CLASSES).hyperparameter["value"] in (10, 20)


# ----------------------------------------------------------------------------------------------- logistic regression


def test_logreg_matches_scikit_learns_own_estimator(parts):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
    grid = LOGREG_C_GRID[::3]
    result = logreg_probe(*parts, num_classes=CLASSES, config=LogregConfig(c_grid=grid))
    scaler = StandardScaler().fit(train_x)
    best_key, best = None, None
    for c in grid:
        model = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(train_x), train_y)
        probabilities = model.predict_proba(scaler.transform(valid_x))
        key = (
            np.mean(probabilities.argmax(1) == valid_y),
            np.mean(np.log(probabilities[np.arange(len(valid_y)), valid_y])),
        )
        if best_key is None or key > best_key:
            best_key, best = key, model
    assert result.hyperparameter == {"name": "C", "value": best.C}
    assert result.standardised
    np.testing.assert_allclose(result.scores, best.predict_proba(scaler.transform(test_x)), atol=1e-8)
    # Its head (standardiser + linear layer, as core.probing.heads builds it) gives the same probabilities.
    from core.probing.heads import build_head

    head = build_head(result.head_config, feature_dim=train_x.shape[1], num_classes=CLASSES)
    head.load_state_dict(result.head_state)
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(head(torch.as_tensor(test_x)), 1).numpy(), result.scores, atol=1e-5)


# ----------------------------------------------------------------------------------------------- NCM


def test_ncm_by_hand(parts):
    (train_x, train_y), valid, (test_x, test_y) = parts
    unit = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    means = [unit[train_y == c].mean(axis=0) for c in range(CLASSES)]
    expected = []
    for q in test_x:
        q = q / np.linalg.norm(q)
        expected.append(min(range(CLASSES), key=lambda c: np.sum((q - means[c]) ** 2)))
    result = ncm_probe((train_x, train_y), valid, (test_x, test_y), num_classes=CLASSES)
    np.testing.assert_array_equal(result.predictions, expected)
    assert result.hyperparameter == {"name": None, "value": None}
    np.testing.assert_allclose(result.scores.sum(axis=1), 1.0)


# ----------------------------------------------------------------------------------------------- linear and MLP


def test_the_linear_probes_gradient_is_autograds():
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(6, 3, CLASSES)).astype(np.float64), rng.integers(0, CLASSES, 6)
    tensor = torch.tensor(logits, requires_grad=True)
    # Each head's mean loss, summed over heads: each head's gradient is its own.
    loss = sum(torch.nn.functional.cross_entropy(tensor[:, h], torch.as_tensor(labels)) for h in range(3))
    loss.backward()
    np.testing.assert_allclose(cross_entropy_gradient(logits.copy(), labels), tensor.grad.numpy(), atol=1e-12)


def test_linear_probe_picks_the_best_rate_on_validation_and_learns(parts):
    config = LinearConfig(epochs=30)
    result = linear_probe(*parts, num_classes=CLASSES, config=config)
    assert result.hyperparameter["name"] == "lr" and result.hyperparameter["value"] in config.learning_rates
    chance = 100 / CLASSES
    assert result.test.accuracy > 2 * chance
    # Heads train independently: a grid holding only the chosen rate reaches the chosen head's validation accuracy
    # (different initial weights, so the same only within a few images: the seed draws the stack's init).
    alone = linear_probe(
        *parts, num_classes=CLASSES, config=LinearConfig(epochs=30, learning_rates=(result.hyperparameter["value"],))
    )
    assert abs(alone.valid_accuracy - result.valid_accuracy) <= 3 * 100 / len(parts[1][1])
    np.testing.assert_array_equal(result.predictions, result.scores.argmax(axis=1))


def test_the_reference_mlp_is_unchanged(parts):
    """The mlp protocol is the reference head (core.probing.heads) with the same numbers, to the last bit, on a fixed
    seed."""
    config = HeadConfig(epochs=4, seed=7)
    reference = train_head(*parts, num_classes=CLASSES, config=config)
    probed = mlp_probe(*parts, num_classes=CLASSES, config=config)
    assert probed.test.accuracy == reference.test.accuracy
    assert probed.test_loss == reference.test.loss
    np.testing.assert_array_equal(probed.scores, reference.test.probabilities)
    assert probed.hyperparameter == {"name": "epoch", "value": reference.best_epoch}
    via_name = run_probe("mlp", *parts, num_classes=CLASSES, config=ProbeConfig(mlp=config), seed=7)
    np.testing.assert_array_equal(via_name.scores, reference.test.probabilities)


def test_metrics_top5_and_mean_class_by_hand():
    scores = np.array([[0.1, 0.2, 0.3, 0.4, 0.0, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0, 0.0, 0.05, 0.05]])
    labels = np.array([4, 0])
    # Row 0: class 4 has the 5th highest score only on ties with 5, 6 (stable order keeps 4 first).
    assert top_k_accuracy(scores, labels, 1) == 50.0
    assert top_k_accuracy(scores, labels, 5) == 100.0


# ----------------------------------------------------------------------------------------------- few-shot


def test_parse_shots():
    assert parse_shots("1,2,4,8,16,all") == [1, 2, 4, 8, 16, None]
    assert parse_shots(" 4 , all, 4") == [4, None]
    for bad in ("0", "two", "1,,2", "-1"):
        with pytest.raises(FlowerProbeError, match="shots must be positive whole numbers or 'all'"):
            parse_shots(bad)


def test_draws_take_shots_per_class_nested_and_all_a_small_class_has():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    for seed in range(3):
        previous = set()
        for shots in (1, 2, 4, 8):
            picked = draw_shots(labels, shots, seed=seed)
            counts = np.bincount(labels[picked], minlength=3)
            assert counts.tolist() == [min(shots, 10), min(shots, 10), min(shots, 3)]
            assert previous <= set(picked.tolist())  # a seed's draws are nested
            previous = set(picked.tolist())
    assert not np.array_equal(draw_shots(labels, 2, seed=0), draw_shots(labels, 2, seed=1))
    np.testing.assert_array_equal(draw_shots(labels, None, seed=0), np.arange(len(labels)))


def test_check_shots_refuses_more_than_any_class_holds_and_an_empty_class():
    labels = np.array([0, 0, 0, 1, 1, 2])
    check_shots(labels, [1, 3, None], class_names=("a", "b", "c"))  # class c has one image: it uses it
    with pytest.raises(FlowerProbeError, match=r"shots must be at most 3 .* got \[4, 16\]"):
        check_shots(labels, [1, 4, 16], class_names=("a", "b", "c"))
    with pytest.raises(FlowerProbeError, match="'d' has none"):
        check_shots(labels, [1], class_names=("a", "b", "c", "d"))


def test_plan_refuses_unknown_protocols_and_missing_variants():
    with pytest.raises(
        FlowerProbeError, match="protocols must be among mlp, linear, logreg, knn, ncm, attentive, zeroshot, got svm"
    ):
        plan_suite(backbones=["resnet50"], protocols=["svm"], features=None, shots=[None], seeds=1)
    with pytest.raises(FlowerProbeError, match="features must be one of gap for resnet50, got 'patch_mean'"):
        plan_suite(backbones=["resnet50"], protocols=["knn"], features=["patch_mean"], shots=[None], seeds=1)
    with pytest.raises(FlowerProbeError, match="seeds"):
        plan_suite(backbones=["resnet50"], protocols=["knn"], features=None, shots=[None], seeds=0)
    plan = plan_suite(
        backbones=["dinov2_vits14", "resnet50"], protocols=list(PROTOCOLS), features=None, shots=[1, 2, None], seeds=3
    )
    assert plan.runs == 2 * 5 * (3 + 3 + 1)
    assert [variant for _, variant in plan.choices] == ["cls", "gap"]


def test_plan_gives_each_backbone_the_requested_variants_it_has():
    # ``probe --features cls,patch_mean`` for a ViT beside a CNN: the ViT probes both, the CNN (neither) its gap.
    plan = plan_suite(
        backbones=["dinov2_vits14", "resnet50"],
        protocols=["knn"],
        features=["cls", "patch_mean"],
        shots=[None],
        seeds=1,
    )
    assert [(choice.spec, variant) for choice, variant in plan.choices] == [
        ("dinov2_vits14", "cls"),
        ("dinov2_vits14", "patch_mean"),
        ("resnet50", "gap"),
    ]
    assert plan.notes == ("resnet50: no cls, patch_mean features (it gives gap); probing gap instead",)
    both = plan_suite(
        backbones=["dinov2_vits14", "resnet50"], protocols=["knn"], features=["cls", "gap"], shots=[None], seeds=1
    )
    assert [variant for _, variant in both.choices] == ["cls", "gap"]
    assert len(both.notes) == 2  # each lacks one of the two
    with pytest.raises(FlowerProbeError, match="features must be one of gap for resnet50, got 'last4'"):
        plan_suite(backbones=["resnet50"], protocols=["knn"], features=["last4"], shots=[None], seeds=1)


# ----------------------------------------------------------------------------------------------- the suite, recorded


@pytest.fixture
def probe_workspace(populated_root, tmp_path, monkeypatch) -> Workspace:
    """A copy of the session's populated workspace: its efficientnet_lite0 and random resnet50 features are cached."""
    root = tmp_path / "workspace"
    shutil.copytree(populated_root, root)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    return Workspace.from_env()


def test_bad_suite_input_records_nothing(probe_workspace):
    registry = RunRegistry(probe_workspace.registry_path)
    before = len(registry.list_runs())
    for kwargs, message in (
        ({"shots": [100]}, "shots must be at most"),
        ({"protocols": ["mlp", "svm"]}, "protocols must be among"),
        ({"features": ["last4"]}, "features must be one of gap"),
    ):
        with pytest.raises(FlowerProbeError, match=message):
            run_probe_suite(
                **{
                    "dataset": "synthetic",
                    "backbones": ["efficientnet_lite0"],
                    "protocols": ["knn"],
                    "workspace": probe_workspace,
                    **kwargs,
                }
            )
    assert len(registry.list_runs()) == before


# heavy for -m "not slow" (under 3 min on 2 cores): a whole suite of runs
@pytest.mark.slow
def test_a_small_suite_is_recorded_run_by_run(probe_workspace):
    events = []
    records = run_probe_suite(
        dataset="synthetic",
        backbones=["efficientnet_lite0", "resnet50@random"],
        protocols=list(PROTOCOLS),
        shots=[1, None],
        seeds=2,
        workspace=probe_workspace,
        progress=events.append,
    )
    assert len(records) == 2 * 5 * (2 + 1)
    assert len({r["group_id"] for r in records}) == 1
    assert {r["status"] for r in records} == {"completed"}
    registry = RunRegistry(probe_workspace.registry_path)
    assert len(registry.list_runs(few_shot=True)) == 2 * 5 * 2
    full = [r for r in records if r["shots"] is None]
    for record in records:
        assert record["features"] == "gap" and record["protocol"] in PROTOCOLS
        low, high = record["metrics"]["test_acc_ci"]
        assert low <= record["test_acc"] <= high
        predictions = registry.predictions(record["id"])
        assert np.mean([p["label"] == p["predicted"] for p in predictions]) * 100 == pytest.approx(record["test_acc"])
    # Heads only where Classify can use them: the whole training part, and a probe that is a core.probing.heads head.
    assert {r["protocol"] for r in full if r["head_path"]} == {"mlp", "linear", "logreg"}
    assert all(r["head_path"] is None for r in records if r["shots"] is not None)
    assert any(e.stage == "probe" and e.done == len(records) for e in events)

    rows = result_rows(records)
    assert set(rows[0]) == {
        "backbone",
        "weights",
        "features",
        "protocol",
        "shots",
        "seed",
        "test_acc",
        "test_acc_ci",
        "hyperparameter",
        "run_id",
    }
    table = protocols_table(records)
    assert table.splitlines()[0].split()[3:] == list(PROTOCOLS)
    assert "resnet50 (random weights) · gap" in table
    points = [p for p in fewshot_points(records) if p["shots"] == 1]
    assert len(points) == 10 and all(p["draws"] == 2 and p["train_images"] == 17 for p in points)
    assert "images per class" in fewshot_table(records)


def test_an_old_registry_gains_the_new_fields_and_reads_as_the_reference_mlp(probe_workspace):
    import sqlite3

    path = probe_workspace.registry_path
    with sqlite3.connect(path) as conn:  # back to the schema before probes: no protocol, features, shots, metrics
        for column in ("protocol", "features", "shots", "metrics"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    runs = RunRegistry(path).list_runs()
    assert {(r["backbone"], r["weights"], r["protocol"], r["features"], r["shots"], r["metrics"]) for r in runs} == {
        ("efficientnet_lite0", "pretrained", "mlp", "gap", None, None),
        ("resnet50", "random", "mlp", "gap", None, None),
    }
