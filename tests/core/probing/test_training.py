"""Heads: logits out, plain top-1, best-on-valid weights, test on the test part, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.base.errors import FlowerProbeError
from core.probing.heads import HeadConfig, build_head, confusion_matrix, per_class_accuracy, top1_accuracy, train_head


def _blobs(n_per_class: int, *, classes: int = 4, dim: int = 16, seed: int = 0, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per_class)
    return (centres[labels] + rng.normal(scale=noise, size=(len(labels), dim))).astype(np.float32), labels


def test_reference_head_shape_and_output_is_logits():
    head = build_head(HeadConfig(), feature_dim=384, num_classes=17)
    layers = list(head)
    assert isinstance(layers[0], torch.nn.Linear) and layers[0].in_features == 384 and layers[0].out_features == 128
    assert isinstance(layers[1], torch.nn.ReLU)
    assert isinstance(layers[2], torch.nn.Linear) and layers[2].out_features == 17
    out = head(torch.randn(8, 384))
    # Logits, not probabilities: unbounded, negative somewhere, rows do not sum to one.
    assert (out < 0).any() and not torch.allclose(out.sum(dim=1), torch.ones(8))
    assert isinstance(build_head(HeadConfig(architecture="linear"), feature_dim=10, num_classes=3), torch.nn.Linear)


def test_loss_is_cross_entropy_on_logits_not_floored():
    # Softmax before CrossEntropyLoss floors the loss near 1.93 on 17 classes; on logits it goes near zero.
    x, y = _blobs(40, classes=4, noise=0.1)
    result = train_head((x, y), (x, y), (x, y), num_classes=4, config=HeadConfig(epochs=30))
    assert result.epochs[-1].train_loss < 0.1
    assert result.test.accuracy == 100.0


def test_top1_counts_confidently_wrong_predictions():
    logits = torch.tensor([[10.0, -10.0], [10.0, -10.0], [-5.0, 5.0], [0.1, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])  # second is confidently wrong, last is barely wrong
    assert top1_accuracy(logits, labels) == 50.0


def test_test_metrics_come_from_test_part_with_best_valid_weights():
    x, y = _blobs(30, seed=1)
    x_test, y_test = _blobs(10, seed=2)
    shuffled = np.random.default_rng(0).permutation(y_test)  # unlearnable test labels
    result = train_head((x, y), (x, y), (x_test, shuffled), num_classes=4, config=HeadConfig(epochs=5))
    assert len(result.test.labels) == len(shuffled) and np.array_equal(result.test.labels, shuffled)
    expected = float((result.test.predictions == shuffled).mean() * 100)
    assert result.test.accuracy == pytest.approx(expected)
    assert result.test.accuracy < 60  # it really is the test part, not the training data it fits
    best = max(result.epochs, key=lambda e: (e.valid_acc, -e.valid_loss))
    assert result.best_epoch == best.epoch
    assert result.test.probabilities.shape == (40, 4) and np.allclose(
        result.test.probabilities.sum(axis=1), 1, atol=1e-5
    )
    assert result.test.confusion.sum() == 40


def test_same_seed_same_numbers_other_seed_differs():
    x, y = _blobs(20, noise=2.0)
    a = train_head((x, y), (x, y), (x, y), num_classes=4, config=HeadConfig(seed=3))
    b = train_head((x, y), (x, y), (x, y), num_classes=4, config=HeadConfig(seed=3))
    c = train_head((x, y), (x, y), (x, y), num_classes=4, config=HeadConfig(seed=4))
    assert a.epochs == b.epochs and a.test.loss == b.test.loss
    assert a.epochs != c.epochs


def test_confusion_and_per_class():
    confusion = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert per_class_accuracy(confusion) == [50.0, 100.0, 0.0, None]


def test_standardised_head_separates_features_of_awkward_scale_and_carries_its_statistics():
    # A random-weight backbone's features: a huge shared offset, the classes in small differences, one dead dimension.
    x, y = _blobs(30, noise=0.5)
    x = (x * 0.01 + 1000.0).astype(np.float32)
    x[:, 0] = 7.0
    raw = train_head((x, y), (x, y), (x, y), num_classes=4, config=HeadConfig())
    standardised = train_head((x, y), (x, y), (x, y), num_classes=4, config=HeadConfig(standardise=True))
    assert raw.test.accuracy < 50 and standardised.test.accuracy > 95
    state = standardised.state_dict
    np.testing.assert_allclose(state["0.mean"].numpy(), x.mean(axis=0), rtol=1e-6)
    assert state["0.std"][0] == 1.0  # a constant dimension keeps scale 1 instead of dividing by zero
    np.testing.assert_allclose(state["0.std"][1:].numpy(), x[:, 1:].std(axis=0), rtol=1e-3)
    # A head rebuilt from the config and loaded from the state (as Predictor does) gives the same logits.
    rebuilt = build_head(HeadConfig(standardise=True), feature_dim=x.shape[1], num_classes=4)
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    with torch.no_grad():
        probabilities = torch.softmax(rebuilt(torch.as_tensor(x)), dim=1).numpy()
    np.testing.assert_allclose(probabilities, standardised.test.probabilities, atol=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [("epochs", 0), ("lr", -1.0), ("architecture", "transformer"), ("batch_size", 2.5), ("standardise", "yes")],
)
def test_head_config_validation_names_the_parameter(field, value):
    with pytest.raises(FlowerProbeError, match=field):
        HeadConfig(**{field: value})
