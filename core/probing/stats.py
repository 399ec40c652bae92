"""Uncertainty of test accuracies: bootstrap intervals over test images, and paired comparisons of two runs.

A test accuracy on 340 images moves by several points with the draw of those images, so every accuracy
gets a 95 % percentile bootstrap interval over its test images (``scipy.stats.bootstrap``). Two runs on
the same test images are compared on those images, pair by pair: the accuracy difference with a paired
bootstrap interval (the same resampled images for both runs), and McNemar's exact test on the images
where exactly one run is right (a binomial test on the discordant pairs, ``scipy.stats.binomtest``).
Accuracies and differences are in percent, as everywhere in Flower Probe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from core.base.bootstrap import CONFIDENCE, N_RESAMPLES, percentile_interval
from core.base.errors import FlowerProbeError


def _correct_vector(correct: np.ndarray, name: str) -> np.ndarray:
    correct = np.asarray(correct)
    if correct.ndim != 1 or len(correct) == 0:
        raise FlowerProbeError(
            f"{name} must be a non-empty 1-d array of right/wrong per test image, got shape {correct.shape}."
        )
    return correct.astype(float)


def _mean_percent(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(samples[0], axis=axis) * 100


def _difference_percent(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return (np.mean(a, axis=axis) - np.mean(b, axis=axis)) * 100


def bootstrap_interval(correct: np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the accuracy (percent) over test images.

    Parameters
    ----------
    correct : ndarray of shape (n_test,), bool
        Whether each test image was classified right.

    Returns
    -------
    (low, high) : tuple of float, percent
    """
    data = _correct_vector(correct, "correct")
    if np.all(data == data[0]):  # every image right (or every one wrong): no resample can differ
        value = float(data[0] * 100)
        return value, value
    return percentile_interval((data,), _mean_percent, seed=seed, n_resamples=n_resamples)


@dataclass(frozen=True)
class PairedComparison:
    """Run A against run B on the same test images (percent points; positive: A is better)."""

    n_images: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    interval: tuple[float, float]
    only_a_right: int  # discordant pairs: A right, B wrong
    only_b_right: int
    p_value: float  # McNemar's exact test (two-sided binomial test on the discordant pairs)

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact(only_a_right: int, only_b_right: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts of a 2x2 table (1.0 when there are none)."""
    for name, value in (("only_a_right", only_a_right), ("only_b_right", only_b_right)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise FlowerProbeError(f"{name} must be a count (an integer >= 0), got {value!r}.")
    discordant = int(only_a_right) + int(only_b_right)
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(int(only_a_right), discordant, 0.5, alternative="two-sided").pvalue)


def paired_comparison(
    correct_a: np.ndarray, correct_b: np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> PairedComparison:
    """Accuracy difference A - B with a paired bootstrap interval, and McNemar's exact p-value.

    Parameters
    ----------
    correct_a, correct_b : ndarray of shape (n_test,), bool
        Right/wrong per test image for each run, the same images in the same order.
    """
    a = _correct_vector(correct_a, "correct_a")
    b = _correct_vector(correct_b, "correct_b")
    if len(a) != len(b):
        raise FlowerProbeError(
            f"the two runs must be scored on the same test images, got {len(a)} and {len(b)} images."
        )
    only_a, only_b = int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1)))
    difference = float(_difference_percent(a, b))
    if only_a + only_b == 0:  # identical on every image: every paired resample has difference 0
        interval = (difference, difference)
    else:
        interval = percentile_interval((a, b), _difference_percent, paired=True, seed=seed, n_resamples=n_resamples)
    return PairedComparison(
        n_images=len(a),
        accuracy_a=float(a.mean() * 100),
        accuracy_b=float(b.mean() * 100),
        difference=difference,
        interval=interval,
        only_a_right=only_a,
        only_b_right=only_b,
        p_value=mcnemar_exact(only_a, only_b),
    )


def format_p_value(p_value: float) -> str:
    """``p = 0.032``, ``p = 4.1e-05``, or ``p < 1e-10`` below that floor (double precision says nothing finer)."""
    if p_value < 1e-10:
        return "p < 1e-10"
    return f"p = {p_value:.2g}" if p_value < 0.001 else f"p = {p_value:.3f}"


def comparison_sentence(comparison: PairedComparison, *, name_a: str, name_b: str) -> str:
    """``dinov2_vits14 beats resnet50 by 31.2 points, 95 % CI 27.0 to 35.4, McNemar p < 1e-10`` (plain text)."""
    low, high = comparison.interval
    difference = comparison.difference
    if difference == 0:
        head = f"{name_a} and {name_b} tie"
    elif difference > 0:
        head = f"{name_a} beats {name_b} by {difference:.1f} points"
    else:
        head = f"{name_b} beats {name_a} by {-difference:.1f} points"
        low, high = -high, -low
    return (
        f"{head}, {CONFIDENCE * 100:.0f} % CI {low:.1f} to {high:.1f}, McNemar {format_p_value(comparison.p_value)} "
        f"({comparison.n_images} test images; {comparison.only_a_right} only {name_a} got right, "
        f"{comparison.only_b_right} only {name_b})"
    )
