"""The Pareto front of accuracy against cost: the runs no other run beats on both."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.base.errors import FlowerProbeError


def pareto_front(
    costs: Sequence[float], accuracies: Sequence[float], *, lower_cost_is_better: bool = True
) -> list[int]:
    """Indices of the points on the front, cheapest first.

    A point is on the front when no other point is at least as good on both axes and strictly better on one
    (cost: lower is better, or higher with ``lower_cost_is_better=False``, as for images per second;
    accuracy: higher is better). Equal points are all kept. Points with a missing (NaN) value are left out.

    Parameters
    ----------
    costs, accuracies : sequences of the same length n
    """
    cost, accuracy = np.asarray(costs, dtype=np.float64), np.asarray(accuracies, dtype=np.float64)
    if cost.shape != accuracy.shape or cost.ndim != 1:
        raise FlowerProbeError(
            f"costs and accuracies must be two lists of the same length, got {cost.shape} and {accuracy.shape}."
        )
    sign = 1.0 if lower_cost_is_better else -1.0
    better_cost = sign * cost  # lower is better from here on
    valid = np.flatnonzero(np.isfinite(cost) & np.isfinite(accuracy))
    front = []
    for i in valid:
        dominated = any(
            better_cost[j] <= better_cost[i]
            and accuracy[j] >= accuracy[i]
            and (better_cost[j] < better_cost[i] or accuracy[j] > accuracy[i])
            for j in valid
        )
        if not dominated:
            front.append(int(i))
    return sorted(front, key=lambda i: (better_cost[i], -accuracy[i]))
