"""Labels needed: how many labelled images per class for a target accuracy, read off a fitted few-shot curve.

A probe suite's few-shot curve (test top-1 at n labelled images per class, several seeded draws per level) is
fitted with the power law ``accuracy(n) = a - b * n**(-c)`` (a: the ceiling the curve approaches, b: how far below
it one image per class starts, c: how fast the gap closes), by bounded least squares on the per-level means
(scipy's ``curve_fit`` with bounds, trust-region reflective). Its uncertainty comes from a bootstrap over the
draws: each replicate resamples every level's draws with replacement and refits; the band is the 2.5-97.5
percentiles of the replicates' curves.

The answer to "how many for X %" is ``n = (b / (a - X)) ** (1 / c)`` with the bootstrap's interval, and a clear
"cannot say" when the target is at or above the fitted ceiling a (the fit never reaches it), or when reaching it
needs more than ``EXTRAPOLATION_LIMIT`` times the largest measured n: a power law fitted on n <= n_max says
little about the curve's bend far beyond it (the ceiling is pinned by the last few points only).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from core.base.errors import FlowerProbeError

MIN_LEVELS = 3  # three parameters: fewer levels leave the power law undetermined
# At most 4x beyond the largest measured n (two more doublings of the usual 1, 2, 4, 8, 16 grid): further out the
# answer is the fitted ceiling's guess, not the curve's.
EXTRAPOLATION_LIMIT = 4.0
BOOTSTRAP_REPLICATES = 200
# Bounds of (a, b, c): accuracies are percent, so the ceiling lies in 0-100 and the gap at n = 1 is at most 100;
# c in [0.01, 3]: a gap closing slower than n^-0.01 is flat, faster than n^-3 is a step.
LOWER, UPPER = (0.0, 0.0, 0.01), (100.0, 100.0, 3.0)


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``a - b * n**(-c)``: accuracy (percent) at ``n`` labelled images per class."""
    return a - b * np.power(np.asarray(n, dtype=np.float64), -c)


@dataclass(frozen=True)
class LearningCurveFit:
    """A fitted few-shot curve and its bootstrap.

    shots : (levels,) labelled images per class at each measured level
    means : (levels,) mean test top-1 (percent) over the level's draws
    replicates : (n_replicates, 3) the bootstrap's (a, b, c)
    """

    a: float
    b: float
    c: float
    shots: tuple[float, ...]
    means: tuple[float, ...]
    draws: tuple[int, ...]  # draws (seeds) per level
    replicates: np.ndarray

    @property
    def n_max(self) -> float:
        return max(self.shots)

    def curve(self, n: np.ndarray) -> np.ndarray:
        return power_law(n, self.a, self.b, self.c)

    def band(self, n: np.ndarray, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The bootstrap band of the curve at ``n`` (shape (m,)): (low, high), each (m,)."""
        curves = np.stack([power_law(n, *p) for p in self.replicates])
        tail = (1 - level) / 2 * 100
        return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


def _fit(shots: np.ndarray, means: np.ndarray) -> tuple[float, float, float]:
    a0 = float(min(100.0, max(means.max() + 1.0, 1e-3)))
    b0 = float(np.clip(a0 - means[np.argmin(shots)], 1e-3, 100.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # exactly 3 levels: no covariance estimate, fit still exact
        params, _ = curve_fit(power_law, shots, means, p0=(a0, b0, 0.5), bounds=(LOWER, UPPER), method="trf")
    return float(params[0]), float(params[1]), float(params[2])


def fit_learning_curve(
    shots: Sequence[float],
    accuracies: Sequence[Sequence[float]],
    *,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
) -> LearningCurveFit:
    """Fit ``a - b n^-c`` to a few-shot curve and bootstrap it over the draws.

    Parameters
    ----------
    shots : sequence of (levels,) positive numbers, labelled images per class at each level
    accuracies : sequence of (levels,) sequences, each level's test top-1 (percent) of every draw
    replicates : bootstrap replicates (>= 1)

    Raises
    ------
    FlowerProbeError
        Fewer than ``MIN_LEVELS`` distinct shot levels, a level without a draw, or an accuracy outside 0-100.
    """
    shots_array = np.asarray(shots, dtype=np.float64)
    if len(shots_array) != len(accuracies):
        raise FlowerProbeError(
            f"shots and accuracies must have one entry per level, got {len(shots_array)} and {len(accuracies)}."
        )
    if len(np.unique(shots_array)) < MIN_LEVELS:
        raise FlowerProbeError(
            f"shots must hold at least {MIN_LEVELS} different few-shot levels to fit a - b n^-c (three parameters), "
            f"got {len(np.unique(shots_array))}: {sorted(set(shots_array.tolist()))}. Run the suite with more shots "
            f"levels (e.g. 1,2,4,8,16)."
        )
    if np.any(~np.isfinite(shots_array)) or np.any(shots_array <= 0):
        raise FlowerProbeError(f"shots must be positive numbers, got {shots_array.tolist()}.")
    draws = [np.asarray(a, dtype=np.float64) for a in accuracies]
    if any(len(d) == 0 for d in draws):
        raise FlowerProbeError("accuracies must hold at least one draw per shots level, got an empty level.")
    if any(np.any(~np.isfinite(d)) or np.any(d < 0) or np.any(d > 100) for d in draws):
        raise FlowerProbeError("accuracies must be percentages in 0-100.")
    if not isinstance(replicates, int) or replicates < 1:
        raise FlowerProbeError(f"replicates must be a whole number >= 1, got {replicates!r}.")
    means = np.array([d.mean() for d in draws])
    a, b, c = _fit(shots_array, means)
    rng = np.random.default_rng(seed)
    fitted = []
    for _ in range(replicates):
        resampled = np.array([rng.choice(d, size=len(d), replace=True).mean() for d in draws])
        fitted.append(_fit(shots_array, resampled))
    return LearningCurveFit(
        a=a,
        b=b,
        c=c,
        shots=tuple(float(s) for s in shots_array),
        means=tuple(float(m) for m in means),
        draws=tuple(len(d) for d in draws),
        replicates=np.asarray(fitted),
    )


@dataclass(frozen=True)
class LabelsAnswer:
    """``n`` labelled images per class for ``target`` percent, or why it cannot be said.

    ``n`` is None when ``can_say`` is False; ``interval`` is the bootstrap's 95 % interval of n (None where
    too few replicates reach the target); ``extrapolation`` is n / the largest measured n (> 1: beyond the data).
    """

    target: float
    can_say: bool
    n: float | None
    interval: tuple[float, float] | None
    extrapolation: float | None
    text: str


def _needed(a: float, b: float, c: float, target: float) -> float:
    if target >= a:
        return math.inf
    if b <= 0:
        return 1.0
    return float((b / (a - target)) ** (1 / c))


def labels_needed(fit: LearningCurveFit, *, target: float) -> LabelsAnswer:
    """How many labelled images per class the fitted curve needs for ``target`` percent test top-1.

    Raises
    ------
    FlowerProbeError
        ``target`` is not a number in 0-100.
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 <= target <= 100:
        raise FlowerProbeError(f"target must be a test accuracy in percent, between 0 and 100, got {target!r}.")
    target = float(target)
    n_max = fit.n_max
    if target >= fit.a:
        return LabelsAnswer(
            target,
            False,
            None,
            None,
            None,
            f"cannot say: {target:g} % is at or above the fitted ceiling a = {fit.a:.1f} %, which the curve "
            f"approaches but never reaches (measured up to {n_max:g} images per class).",
        )
    n = _needed(fit.a, fit.b, fit.c, target)
    extrapolation = n / n_max
    if extrapolation > EXTRAPOLATION_LIMIT:
        return LabelsAnswer(
            target,
            False,
            None,
            None,
            extrapolation,
            f"cannot say: the fit would need about {n:,.0f} images per class, {extrapolation:.0f}x the largest "
            f"measured level ({n_max:g}); beyond {EXTRAPOLATION_LIMIT:g}x a power law fitted on n <= {n_max:g} "
            f"is guessing the curve's bend, not reading it.",
        )
    samples = np.array([_needed(a, b, c, target) for a, b, c in fit.replicates])
    finite = samples[np.isfinite(samples)]
    interval = (
        (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5)))
        if len(finite) >= 0.9 * len(samples)
        else None
    )
    shown = max(1, math.ceil(n))
    where = (
        f"extrapolated {extrapolation:.1f}x beyond the largest measured level ({n_max:g})"
        if extrapolation > 1
        else f"within the measured levels ({min(fit.shots):g}-{n_max:g})"
    )
    if interval is None:
        spread = (
            f"; in {len(samples) - len(finite)} of {len(samples)} bootstrap replicates the target is above the "
            f"ceiling, so no interval"
        )
    else:
        spread = f" (95 % bootstrap interval {max(1, math.ceil(interval[0]))}-{math.ceil(interval[1]):,})"
    reached = [(s, m) for s, m in zip(fit.shots, fit.means) if m >= target]
    measured = (
        f" The measured curve itself already reaches it at {min(reached)[0]:g} per class ({min(reached)[1]:.1f} %): "
        f"the fit smooths over the levels and is not exact at each."
        if reached
        else ""
    )
    return LabelsAnswer(
        target,
        True,
        n,
        interval,
        extrapolation,
        f"about {shown:,} labelled images per class for {target:g} %{spread}, {where}.{measured}",
    )


def curve_points(records: Sequence[dict]) -> dict[tuple, dict[float, list[float]]]:
    """Few-shot runs grouped for fitting: ``{(backbone, weights, features, protocol): {shots: [test_acc, ...]}}``.

    The suite's few-shot levels, and its run on the whole training part ("all") placed at its mean training images
    per class (as the few-shot plot places it) when the suite recorded how many it had; other runs on the whole
    training part (no recorded count) are left out.
    """
    grouped: dict[tuple, dict[float, list[float]]] = {}
    for run in records:
        if run.get("test_acc") is None or run.get("status", "completed") != "completed":
            continue
        if run.get("shots") is not None:
            n = float(run["shots"])
        elif "train_images" in (run.get("config") or {}) and run.get("class_names"):
            n = run["config"]["train_images"] / len(run["class_names"])
        else:
            continue
        key = (run["backbone"], run["weights"], run.get("features"), run["protocol"])
        grouped.setdefault(key, {}).setdefault(n, []).append(float(run["test_acc"]))
    return grouped
