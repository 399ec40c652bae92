"""Calibration: ECE as torchmetrics computes it, NLL and Brier by hand, temperature scaling, the probes' records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchmetrics.classification import MulticlassCalibrationError

from core.base.errors import FlowerProbeError
from core.predict.classify import head_temperature
from core.probing.calibration import (
    brier_score,
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    softmax,
)
from core.probing.probes import PROTOCOLS, head_metadata, run_probe


def _random_probabilities(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, classes))
    labels = np.where(rng.random(n) < 0.6, logits.argmax(axis=1), rng.integers(0, classes, n))
    return softmax(logits), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_is_torchmetrics_multiclass_calibration_error(seed):
    probabilities, labels = _random_probabilities(500, 7, seed)
    metric = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")
    expected = float(metric(torch.as_tensor(probabilities), torch.as_tensor(labels)))
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-6)
    # The reliability diagram's bins give the same ECE (no confidence is exactly 1 here).
    bins = reliability_bins(probabilities, labels)
    assert sum(bins["count"]) == 500 and len(bins["count"]) == 15
    from_bins = sum(c / 500 * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c)
    assert from_bins == pytest.approx(expected, abs=1e-6)


def test_ece_nll_brier_on_a_hand_made_table():
    # Four images, two classes. Confidences 0.9, 0.9 (bin 13), 0.6, 0.6 (bin 9); right: yes, no, yes, yes.
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 1])
    # bin 13: confidence 0.9, accuracy 0.5 -> |0.4| * 2/4; bin 9: confidence 0.6, accuracy 1 -> |0.4| * 2/4
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.4)
    bins = reliability_bins(probabilities, labels)
    assert bins["count"][13] == 2 and bins["count"][9] == 2 and bins["accuracy"][13] == 0.5
    assert negative_log_likelihood(probabilities, labels) == pytest.approx(
        -(np.log(0.9) + np.log(0.1) + 2 * np.log(0.6)) / 4
    )
    # Brier: (0.1^2 + 0.1^2), (0.9^2 + 0.9^2), (0.4^2 + 0.4^2) twice, averaged.
    assert brier_score(probabilities, labels) == pytest.approx((0.02 + 1.62 + 0.32 + 0.32) / 4)


def test_temperature_scaling_lowers_validation_nll_of_overconfident_logits_and_keeps_accuracy():
    rng = np.random.default_rng(0)
    n, classes = 2000, 5
    honest = rng.normal(size=(n, classes))
    labels = np.array([rng.choice(classes, p=p) for p in softmax(honest)])  # drawn from softmax(honest): calibrated
    overconfident = honest * 4.0
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(4.0, rel=0.15)  # it undoes the sharpening
    before = negative_log_likelihood(softmax(overconfident), labels)
    after = negative_log_likelihood(softmax(overconfident, temperature), labels)
    assert after < before - 0.5
    np.testing.assert_array_equal(softmax(overconfident, temperature).argmax(1), overconfident.argmax(1))
    assert expected_calibration_error(softmax(overconfident, temperature), labels) < expected_calibration_error(
        softmax(overconfident), labels
    )


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (np.array([[2.0, 0.0]]), np.array([0]), "valid_labels must hold at least 2 validation images"),
        (np.array([[2.0, 0.0], [1.0, 0.5], [0.0, 3.0]]), np.array([1, 1, 1]), "valid_labels must hold at least 2 cl"),
        (np.array([[np.nan, 0.0], [1.0, 0.5]]), np.array([0, 1]), "valid_logits must be finite"),
    ],
)
def test_fitting_on_a_validation_part_that_cannot_calibrate_names_the_parameter(logits, labels, message):
    with pytest.raises(FlowerProbeError, match=message):
        fit_temperature(logits, labels)


def test_a_run_whose_validation_part_has_one_class_is_recorded_without_a_temperature():
    logits = np.array([[2.0, 0.0], [1.0, 0.5]])
    record = calibration_record(
        protocol="linear",
        valid_logits=logits,
        valid_labels=np.array([0, 0]),
        test_logits=logits,
        test_scores=softmax(logits),
        test_labels=np.array([0, 1]),
    )
    assert record["temperature"] is None and record["after"] is None and "2 classes" in record["note"]
    assert record["before"]["nll"] == pytest.approx(negative_log_likelihood(softmax(logits), np.array([0, 1])))
    assert head_metadata(record) == {}


def _parts(seed=0, classes=4, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 0.6

    def part(n):
        labels = rng.integers(0, classes, n)
        return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels

    return part(120), part(80), part(80)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_probe_records_its_calibration(protocol):
    train, valid, test = _parts()
    result = run_probe(protocol, train, valid, test, num_classes=4)
    record = result.record_metrics()["calibration"]
    before = record["before"]
    assert before["ece"] == pytest.approx(expected_calibration_error(result.scores, result.labels), abs=1e-6)
    assert before["brier"] == pytest.approx(brier_score(result.scores, result.labels))
    if protocol == "knn":  # vote shares: shown as they are, not calibrated
        assert record["temperature"] is None and before["nll"] is None and "vote" in record["note"]
        return
    assert record["temperature"] > 0
    # The temperature divides the logits: accuracy of the calibrated scores is the run's accuracy.
    after_bins = record["after"]["bins"]
    correct = sum(c * a for c, a in zip(after_bins["count"], after_bins["accuracy"]) if c)
    assert correct / len(result.labels) * 100 == pytest.approx(result.test.accuracy, abs=1e-6)
    assert float(head_metadata(record)["temperature"]) == pytest.approx(record["temperature"])


def test_the_temperature_saved_with_a_head_is_read_back(tmp_path):
    path = tmp_path / "head.safetensors"
    save_file({"weight": torch.zeros(2, 3)}, str(path), metadata={"run_id": "1", **head_metadata({"temperature": 1.7})})
    assert head_temperature(path) == pytest.approx(1.7)
    save_file({"weight": torch.zeros(2, 3)}, str(path), metadata={"run_id": "1"})
    assert head_temperature(path) is None
