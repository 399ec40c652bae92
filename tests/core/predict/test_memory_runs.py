"""k-NN and NCM runs classify from their cached training features (no head file by design), giving the predictions
the run recorded for its test photos; a run that cannot classify says why and which runs can."""

from __future__ import annotations

import numpy as np
import pytest

from core.base.errors import FlowerProbeError
from core.predict.classify import Predictor
from core.runs.files import RunFiles
from core.runs.registry import RunRegistry


@pytest.fixture
def probed(populated_copy):
    from core.probing.suite import run_probe_suite

    records = run_probe_suite(
        dataset="synthetic",
        backbones=["efficientnet_lite0"],
        protocols=["knn", "ncm"],
        shots=[2, None],
        seeds=1,
        workspace=populated_copy,
    )
    return populated_copy, records


@pytest.mark.parametrize("protocol", ["knn", "ncm"])
def test_knn_and_ncm_runs_predict_what_they_recorded(probed, protocol):
    workspace, records = probed
    run = next(r for r in records if r["protocol"] == protocol and r["shots"] is None)
    assert not run["head_path"]  # nothing on disk: the prediction comes from the cached training features
    registry = RunRegistry(workspace.registry_path)
    stored = registry.predictions(run["id"])
    photos = RunFiles(run, workspace).images([s["path"] for s in stored])
    predictor = Predictor.from_run(run["id"], workspace=workspace)
    predictions = predictor.predict([(photo.name, photo) for photo in photos])
    assert [predictor.class_names.index(p.predicted_class) for p in predictions] == [s["predicted"] for s in stored]
    probabilities = np.stack([p.probabilities for p in predictions])
    if predictor.temperature is not None:
        # Predictions are calibrated (NCM's temperature from validation); the run stored the plain softmax of the same
        # scores: softmax(T * log p) undoes the scaling.
        assert protocol == "ncm"
        logits = predictor.temperature * np.log(np.clip(probabilities, 1e-30, None))
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, [s["probabilities"] for s in stored], atol=1e-4)


def test_a_few_shot_run_is_refused_with_the_true_reason(probed):
    workspace, records = probed
    few_shot = next(r for r in records if r["shots"] == 2)
    with pytest.raises(FlowerProbeError, match="did not record which training images") as caught:
        Predictor.from_run(few_shot["id"], workspace=workspace)
    assert "deleted" not in str(caught.value) and "Train the run again" not in str(caught.value)
