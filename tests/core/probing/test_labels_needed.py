"""Labels needed: the power law a - b n^-c fitted to a few-shot curve, its bootstrap, and the answers it gives."""

from __future__ import annotations

import numpy as np
import pytest

from core.base.errors import FlowerProbeError
from core.probing.labels_needed import EXTRAPOLATION_LIMIT, curve_points, fit_learning_curve, labels_needed, power_law

A, B, C = 92.0, 45.0, 0.7
SHOTS = [1, 2, 4, 8, 16, 32]


def _noisy_curve(seed=0, draws=5, noise=0.8):
    rng = np.random.default_rng(seed)
    return [list(power_law(n, A, B, C) + rng.normal(scale=noise, size=draws)) for n in SHOTS]


def test_fit_recovers_known_parameters_from_noisy_draws():
    fit = fit_learning_curve(SHOTS, _noisy_curve(), replicates=100)
    assert fit.a == pytest.approx(A, abs=1.5)
    assert fit.b == pytest.approx(B, abs=3.0)
    assert fit.c == pytest.approx(C, abs=0.1)
    low, high = fit.band(np.array([1.0, 8.0, 32.0]))
    truth = power_law(np.array([1.0, 8.0, 32.0]), A, B, C)
    assert np.all(low <= high) and np.all(low - 1.0 <= truth) and np.all(truth <= high + 1.0)


def test_labels_needed_answers_within_the_data_and_says_cannot_say_above_the_ceiling():
    fit = fit_learning_curve(SHOTS, _noisy_curve(), replicates=100)
    answer = labels_needed(fit, target=85.0)
    true_n = (B / (A - 85.0)) ** (1 / C)  # 15.2 images per class
    assert answer.can_say and answer.n == pytest.approx(true_n, rel=0.2)
    assert answer.interval[0] <= answer.n <= answer.interval[1]
    assert "labelled images per class for 85 %" in answer.text and "within the measured levels" in answer.text

    low = labels_needed(fit, target=60.0)  # the 2-per-class level measured about 64 %: the answer says so too
    assert low.can_say and "already reaches it at 2 per class" in low.text

    above = labels_needed(fit, target=fit.a + 1)
    assert not above.can_say and above.n is None and above.text.startswith("cannot say")
    assert f"{fit.a:.1f}" in above.text


def test_far_extrapolation_is_refused_with_how_far():
    fit = fit_learning_curve(SHOTS, _noisy_curve(), replicates=20)
    target = float(power_law(32 * EXTRAPOLATION_LIMIT * 3, fit.a, fit.b, fit.c))  # 12x beyond n = 32
    answer = labels_needed(fit, target=target)
    assert not answer.can_say and answer.extrapolation > EXTRAPOLATION_LIMIT
    assert "cannot say" in answer.text and "the largest measured level (32)" in answer.text


@pytest.mark.parametrize("target", [-1, 100.5, "90", True])
def test_target_outside_0_100_names_the_parameter(target):
    fit = fit_learning_curve(SHOTS, _noisy_curve(), replicates=5)
    with pytest.raises(FlowerProbeError, match="target must be .* between 0 and 100"):
        labels_needed(fit, target=target)


def test_fewer_than_three_shot_levels_names_the_parameter():
    with pytest.raises(FlowerProbeError, match="shots must hold at least 3"):
        fit_learning_curve([1, 2], [[40.0, 42.0], [55.0, 57.0]])


def test_curve_points_group_few_shot_runs_and_place_the_suites_all_at_its_images_per_class():
    run = {"backbone": "b", "weights": "random", "features": "cls", "protocol": "knn", "class_names": ["x", "y"]}
    runs = [{**run, "shots": s, "test_acc": acc, "config": {}} for s, acc in [(1, 40.0), (1, 42.0), (4, 60.0)]]
    runs.append({**run, "shots": None, "test_acc": 80.0, "config": {"train_images": 30}})  # the suite's "all"
    runs.append({**run, "shots": None, "test_acc": 81.0, "config": {}})  # a run made otherwise: no count recorded
    assert curve_points(runs) == {("b", "random", "cls", "knn"): {1.0: [40.0, 42.0], 4.0: [60.0], 15.0: [80.0]}}
