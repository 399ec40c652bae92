"""core.probing.stats: bootstrap intervals that cover, McNemar's exact test on a hand-made table, paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.base.errors import FlowerProbeError
from core.probing.stats import (
    bootstrap_interval,
    comparison_sentence,
    format_p_value,
    mcnemar_exact,
    paired_comparison,
)


def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent_of_the_time():
    # Simulated test sets of a classifier whose true accuracy is 80 %: the interval should hold 80 % in
    # about 95 % of them. With S simulations the observed coverage has binomial std sqrt(0.95 * 0.05 / S)
    # (0.0109 at S = 400); the band is 3 of those each side, so a correct interval fails it about 0.3 % of
    # the time. (The percentile interval of a proportion is known to under-cover slightly, well within it.)
    simulations, n_test, true_accuracy = 400, 200, 0.8
    rng = np.random.default_rng(12345)
    covered = 0
    for index in range(simulations):
        correct = rng.random(n_test) < true_accuracy
        low, high = bootstrap_interval(correct, seed=index, n_resamples=1000)
        covered += low <= true_accuracy * 100 <= high
    tolerance = 3 * math.sqrt(0.95 * 0.05 / simulations)
    assert abs(covered / simulations - 0.95) <= tolerance, f"coverage {covered / simulations:.3f}"


def test_bootstrap_interval_brackets_the_accuracy_and_narrows_with_more_images():
    rng = np.random.default_rng(0)
    small, large = rng.random(100) < 0.7, rng.random(10_000) < 0.7
    for correct in (small, large):
        low, high = bootstrap_interval(correct)
        assert low <= correct.mean() * 100 <= high
    # The width scales like 1/sqrt(n): 100x the images, about a tenth of the width.
    width_small = np.subtract(*bootstrap_interval(small)[::-1])
    width_large = np.subtract(*bootstrap_interval(large)[::-1])
    assert 0.05 < width_large / width_small < 0.2


def test_bootstrap_interval_of_a_perfect_run_is_a_point():
    assert bootstrap_interval(np.ones(50, bool)) == (100.0, 100.0)
    assert bootstrap_interval(np.zeros(50, bool)) == (0.0, 0.0)


def test_mcnemar_exact_on_a_hand_made_table():
    # 2x2 table of (run A, run B) right/wrong on 100 images:
    # both right 70, only A right 10, only B right 2, both wrong 18.
    # Exact McNemar: under H0 the 12 discordant images split Binomial(12, 1/2); two-sided p = 2 * P(X <= 2).
    expected = 2 * sum(math.comb(12, k) for k in range(3)) / 2**12
    assert mcnemar_exact(10, 2) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(2, 10) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0

    a = np.array([1] * 70 + [1] * 10 + [0] * 2 + [0] * 18, bool)
    b = np.array([1] * 70 + [0] * 10 + [1] * 2 + [0] * 18, bool)
    comparison = paired_comparison(a, b)
    assert (comparison.only_a_right, comparison.only_b_right) == (10, 2)
    assert comparison.difference == pytest.approx(8.0)
    assert comparison.p_value == pytest.approx(expected, rel=1e-12)
    low, high = comparison.interval
    assert low <= 8.0 <= high


def test_paired_interval_is_narrower_than_the_unpaired_one_for_correlated_runs():
    # Two runs that agree on most images: pairing removes the shared image difficulty.
    rng = np.random.default_rng(1)
    a = rng.random(400) < 0.75
    b = a.copy()
    flip = rng.choice(400, 30, replace=False)
    b[flip] = ~b[flip]
    low, high = paired_comparison(a, b).interval
    unpaired = np.hypot(*(np.subtract(*bootstrap_interval(x)[::-1]) for x in (a, b)))
    assert high - low < unpaired / 2


def test_identical_runs_tie_exactly():
    correct = np.random.default_rng(2).random(60) < 0.5
    comparison = paired_comparison(correct, correct)
    assert comparison.difference == 0 and comparison.interval == (0.0, 0.0) and comparison.p_value == 1.0
    assert comparison_sentence(comparison, name_a="x", name_b="y").startswith("x and y tie")


def test_comparison_sentence_reads_like_the_issue():
    a = np.array([1] * 90 + [0] * 10, bool)
    b = np.array([1] * 40 + [0] * 60, bool)
    comparison = paired_comparison(a, b)
    sentence = comparison_sentence(comparison, name_a="dinov2_vits14", name_b="resnet50")
    low, high = comparison.interval
    assert sentence.startswith(
        f"dinov2_vits14 beats resnet50 by 50.0 points, 95 % CI {low:.1f} to {high:.1f}, McNemar p < 1e-10"
    )
    # The other way round names the winner first and flips the interval.
    reverse = comparison_sentence(paired_comparison(b, a), name_a="resnet50", name_b="dinov2_vits14")
    assert reverse.startswith("dinov2_vits14 beats resnet50 by 50.0 points")


def test_format_p_value():
    assert format_p_value(1e-12) == "p < 1e-10"
    assert format_p_value(3.2e-5) == "p = 3.2e-05"
    assert format_p_value(0.0386) == "p = 0.039"


@pytest.mark.parametrize("bad", [np.array([]), np.ones((3, 2))])
def test_bad_input_is_named(bad):
    with pytest.raises(FlowerProbeError, match="correct"):
        bootstrap_interval(bad)


def test_paired_comparison_needs_the_same_images():
    with pytest.raises(FlowerProbeError, match="same test images"):
        paired_comparison(np.ones(5, bool), np.ones(6, bool))
    with pytest.raises(FlowerProbeError, match="only_a_right"):
        mcnemar_exact(-1, 2)
