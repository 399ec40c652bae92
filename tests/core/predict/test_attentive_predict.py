"""An attentive run classifies: its head on each photo's patch tokens, neighbours in the default pooled features."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from core.base.errors import FlowerProbeError
from core.base.workspace import Workspace
from core.data.datasets import load_dataset
from core.features.extract import extract_features
from core.features.tokens import extract_tokens
from core.predict.classify import Predictor
from core.probing.attentive import load_attentive_head
from core.probing.probes import TEMPERATURE_KEY
from core.runs.files import RunFiles
from core.runs.registry import RunRegistry
from tests.helpers.attentive_runs import BACKBONE, build_attentive_workspace


@pytest.fixture(scope="module")
def attentive_root(tmp_path_factory, tiny_synthetic_folder):
    root = tmp_path_factory.mktemp("attentive") / "workspace"
    return root, build_attentive_workspace(root, tiny_synthetic_folder)


@pytest.fixture
def attentive(attentive_root, tmp_path, monkeypatch) -> tuple[Workspace, dict]:
    """A private copy of the workspace (tests rewrite the head file) and its attentive run."""
    root = tmp_path / "workspace"
    shutil.copytree(attentive_root[0], root)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    monkeypatch.delenv("FLOWER_PROBE_DATA_ROOT", raising=False)
    workspace = Workspace.from_env()
    return workspace, RunRegistry(workspace.registry_path).get_run(attentive_root[1])


def _direct_probabilities(workspace: Workspace, run: dict, rows: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(head(cached tokens) / T): the saved head on the token cache's tokens of dataset ``rows``."""
    cache = extract_tokens(load_dataset("synthetic", workspace), BACKBONE, workspace=workspace)
    positions, kept = cache.positions(rows)
    assert list(kept) == list(rows)
    head = load_attentive_head(load_file(str(RunFiles(run, workspace).head)))
    with torch.no_grad():
        logits = head(torch.from_numpy(np.asarray(cache.tokens[positions], dtype=np.float32)))
    return torch.softmax(logits / temperature, dim=1).numpy()


def _test_rows(predictor: Predictor) -> np.ndarray:
    """The run's test rows, in the registry's order of its stored predictions."""
    return np.sort(predictor.dataset.split(predictor.run["split"])["test"])


def _predict_rows(predictor: Predictor, rows: np.ndarray):
    paths = [predictor.dataset.image_paths[int(r)] for r in rows]
    return predictor.predict([(path.name, path) for path in paths])


def test_predict_is_the_head_on_the_cached_tokens_and_reproduces_the_stored_predictions(attentive):
    workspace, run = attentive
    predictor = Predictor.from_run(run["id"], workspace=workspace, device="cpu")
    assert predictor.reads_tokens and not predictor.calibrated  # the attentive probe fits no temperature
    rows = _test_rows(predictor)
    predictions = _predict_rows(predictor, rows)
    got = np.stack([p.probabilities for p in predictions])
    np.testing.assert_allclose(got, _direct_probabilities(workspace, run, rows, 1.0), atol=1e-5)
    stored = RunRegistry(workspace.registry_path).predictions(run["id"])
    assert [s["row"] for s in stored] == list(rows)
    np.testing.assert_allclose(got, [s["probabilities"] for s in stored], atol=2e-5)
    assert [predictor.class_names.index(p.predicted_class) for p in predictions] == [s["predicted"] for s in stored]


def test_a_saved_temperature_divides_the_logits(attentive):
    workspace, run = attentive
    path = RunFiles(run, workspace).head
    save_file(load_file(str(path)), str(path), metadata={TEMPERATURE_KEY: "2.5"})
    predictor = Predictor.from_run(run["id"], workspace=workspace, device="cpu")
    assert predictor.temperature == 2.5 and "T = 2.50" in predictor.probabilities_note
    rows = _test_rows(predictor)[:3]
    got = np.stack([p.probabilities for p in _predict_rows(predictor, rows)])
    np.testing.assert_allclose(got, _direct_probabilities(workspace, run, rows, 2.5), atol=1e-5)


def test_neighbours_and_the_fence_use_the_backbones_default_pooled_features(attentive):
    workspace, run = attentive
    predictor = Predictor.from_run(run["id"], workspace=workspace, device="cpu")
    dataset = predictor.dataset
    pooled = extract_features(dataset, BACKBONE, workspace=workspace)  # the default variant, cached by the token pass
    assert pooled.from_cache and pooled.variant == predictor.backbone.default_variant
    train_rows = dataset.split(run["split"])["train"]
    expected, rows = pooled.select(train_rows)
    np.testing.assert_array_equal(predictor.reference_rows, rows)
    np.testing.assert_allclose(predictor.reference_features, expected)
    # A training photo finds itself first, and is not unfamiliar.
    (prediction,) = _predict_rows(predictor, rows[:1])
    assert prediction.neighbours[0].row == rows[0] and prediction.neighbours[0].distance < 1e-5
    assert not prediction.unfamiliar and prediction.features.shape == (expected.shape[1],)


def test_a_head_for_other_tokens_is_refused_by_name(attentive):
    workspace, run = attentive
    path = RunFiles(run, workspace).head
    state = {**load_attentive_head(load_file(str(path))).state_dict(), "num_heads": torch.tensor(1)}
    narrow = {"query": torch.zeros(1, 64), "kv.weight": torch.zeros(128, 64), "kv.bias": torch.zeros(128)}
    save_file({**state, **narrow, "linear.weight": torch.zeros(state["linear.weight"].shape[0], 64)}, str(path))
    with pytest.raises(FlowerProbeError, match=r"not the head run .* reads 64-d tokens, and \S+ are 1280-d"):
        Predictor.from_run(run["id"], workspace=workspace, device="cpu")


def test_an_attentive_runs_features_read_as_one_pooled_vector_per_image(attentive):
    # Explorer, Agreement and the other readers of a run's features want (n_images, dim): an attentive run's entry
    # holds patch tokens first, and its default read is the pooled features kept beside them (Lite0's gap).
    from core.agreement.pairs import _run_features
    from core.features.extract import read_features

    workspace, run = attentive
    path = RunFiles(run, workspace).features
    pooled = read_features(path)
    assert pooled.variant == "gap" and pooled.features.ndim == 2
    assert read_features(path, variant="tokens").features.ndim == 3  # asked for by name, the tokens themselves
    np.testing.assert_array_equal(_run_features(run, workspace, "run_a").features, pooled.features)
