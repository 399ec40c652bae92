"""Outliers: each image's cosine distance to its k-th nearest training image, flagged far above the typical one."""

from __future__ import annotations

import numpy as np

from core.health.common import MIN_DISTANCE, robust_centre_spread


def kth_training_distance(unit: np.ndarray, train: np.ndarray, *, k: int) -> np.ndarray:
    """Cosine distance of every image to its ``k``-th nearest training image other than itself.

    Parameters
    ----------
    unit : ndarray of shape (n, dim)
    train : ndarray of shape (n,), bool
        Which images are training images.

    Returns
    -------
    ndarray of shape (n,)
    """
    from sklearn.neighbors import NearestNeighbors

    train_positions = np.flatnonzero(train)
    k = min(k, len(train_positions) - 1)
    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(unit[train_positions])
    distance, neighbour = index.kneighbors(unit)
    # A training image finds itself among its neighbours: leave that one out (by position, not by distance,
    # so a byte copy still counts as a neighbour); a non-training image uses its first k.
    is_self = train_positions[neighbour] == np.arange(len(unit))[:, None]
    others = np.where(is_self, np.inf, distance)
    return np.sort(others, axis=1)[:, k - 1]


def outlier_cutoff(distance: np.ndarray, *, z: float) -> float:
    """The distance above which an image is flagged: ``z`` robust standard deviations (MAD) above the median log
    distance of ``distance`` (shape (n,), ``kth_training_distance``)."""
    centre, spread = robust_centre_spread(np.log(np.clip(distance, MIN_DISTANCE, None)))
    return float(np.exp(centre + z * spread))
