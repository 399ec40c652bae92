"""2-D maps of cached features for the embedding explorer, plus the nearest-neighbour maths it shares.

- ``tsne_embedding``: PCA to 50 dimensions, then t-SNE (openTSNE by default: measured faster than
  scikit-learn at 1,360 and 20,000 points).
- ``embed_new_points``: places new images (uploads) on an existing map without recomputing it.
- ``cosine_neighbours``: k nearest reference rows by cosine distance (explorer and Classify page).
- ``selection_to_rows``: turns Plotly point payloads (hover, click, lasso) into global row ids.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import FlowerProbeError
from .progress import ProgressCallback, report

TsneMethod = Literal["auto", "sklearn", "opentsne"]

# Measured on this project's 2-core machine while other jobs shared it (load 5-12, so wall times
# are inflated and noisy; process CPU seconds in brackets are steadier), 17 gaussian clusters in
# 384-d, PCA to 50-d, perplexity 30, the t-SNE step alone:
#
#   points   scikit-learn BH            openTSNE BH           openTSNE FFT
#            1 thread     2 threads     1 thread    2         1 thread     2 threads
#    1,360   6.0 s [4.0]  11.0 s [11.2] 4.4 s [3.0] 11 s [9]  -            10-18 s
#   20,000   567 s [183]  469 s [203]   162 s [109] -         46 s [31]    78 s [44]
#
# openTSNE wins at both sizes (it also runs 750 iterations to scikit-learn's 1,000), so "auto" means
# openTSNE, with its own gradient choice: Barnes-Hut below 10,000 points, FFT from there (FFT's
# fixed cost per iteration only pays off on big maps). One thread beat two in every pair: the
# iterations are short and a busy second core stalls the other thread at every barrier.
# End to end (PCA + t-SNE + progress, 1 thread): "auto" 8.4 s [4.5] at 1,360 and 68 s [35] at
# 20,000; "sklearn" 12.0 s [5.5] at 1,360.
_TSNE_THREADS = 1

# openTSNE's defaults: 250 early-exaggeration iterations then 500 normal ones; progress counts both.
_OPENTSNE_ITERATIONS = 250 + 500
# A callback every 50 iterations makes openTSNE evaluate the KL divergence 15 times per run: no
# measurable cost at 1,360 points (3.9 s CPU with callbacks, 3.7-4.8 s without) for a moving bar.
_OPENTSNE_CALLBACK_EVERY = 50
# Cosine similarities are computed this many query rows at a time: 1,024 x 20,000 float32 is 80 MB.
_NEIGHBOUR_CHUNK = 1_024
# Distances below this count as "the same image" in ``embed_new_points``: float32 rounding leaves
# 1 - cos of identical 384-d vectors up to ~1e-6 above zero, while distinct photos are >> 1e-3 apart.
_SAME_POINT_DISTANCE = 1e-5


def _as_matrix(array, *, name: str) -> np.ndarray:
    matrix = np.asarray(array, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n_images, dim); got shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values; recompute the cached features.")
    return matrix


def _pca(features: np.ndarray, *, components: int | None, seed: int) -> np.ndarray:
    """PCA to ``components`` dimensions, skipped when the features are already that small."""
    n_images, dim = features.shape
    if components is None or dim <= components:
        return features
    from sklearn.decomposition import PCA

    return PCA(n_components=min(components, n_images), random_state=seed).fit_transform(features)


def _resolve_method(method: str) -> str:
    if method not in ("auto", "sklearn", "opentsne"):
        raise ValueError(f"method must be 'auto', 'sklearn' or 'opentsne'; got {method!r}.")
    return "opentsne" if method == "auto" else method


def _tsne_sklearn(features: np.ndarray, *, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    # scikit-learn's Barnes-Hut gradient runs on OpenMP threads that n_jobs does not limit
    with threadpool_limits(limits=_TSNE_THREADS):
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
            n_jobs=_TSNE_THREADS,
        ).fit_transform(features)


class _OpenTsneProgress:
    """openTSNE callback: restarts its iteration count per phase, so count calls instead."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self._progress = progress
        self._done = 0

    def __call__(self, iteration: int, error: float, embedding: np.ndarray) -> bool:
        self._done += _OPENTSNE_CALLBACK_EVERY
        report(self._progress, "tsne", self._done, _OPENTSNE_ITERATIONS, message=f"KL divergence {error:.3f}")
        return False  # never stop early; cancellation raises CancelledError from the progress callback


def _tsne_opentsne(
    features: np.ndarray, *, perplexity: float, seed: int, progress: ProgressCallback | None
) -> np.ndarray:
    from openTSNE import TSNE

    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        initialization="pca",
        random_state=seed,
        n_jobs=_TSNE_THREADS,
        negative_gradient_method="auto",
        callbacks=_OpenTsneProgress(progress) if progress is not None else None,
        callbacks_every_iters=_OPENTSNE_CALLBACK_EVERY,
    )
    return np.asarray(tsne.fit(features))


def tsne_embedding(
    features,
    *,
    perplexity: float = 30.0,
    pca_components: int | None = 50,
    seed: int = 0,
    method: TsneMethod = "auto",
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """2-D t-SNE map of ``features``, after PCA to ``pca_components`` dimensions.

    Parameters
    ----------
    features : ndarray of shape (n_images, dim)
        Cached backbone features.
    perplexity : float
        t-SNE perplexity, roughly the number of neighbours each point keeps close; must be in
        (0, n_images).
    pca_components : int or None
        PCA first to this many dimensions (denoises and speeds up the neighbour search); ``None`` or
        a feature dimension at most this large skips it.
    seed : int
        Seeds PCA and t-SNE: the same inputs and seed give the same map.
    method : {"auto", "sklearn", "opentsne"}
        ``"auto"`` picks the library measured faster (openTSNE at 1,360 and 20,000 points; see the
        table at the top of this module).
    progress : ProgressCallback or None
        Receives ``"tsne"`` events at start and end (and every 50 iterations with openTSNE).

    Returns
    -------
    ndarray of shape (n_images, 2)
    """
    matrix = _as_matrix(features, name="features")
    n_images = matrix.shape[0]
    if not 0 < perplexity < n_images:
        raise FlowerProbeError(
            f"perplexity must be greater than 0 and smaller than the number of points ({n_images}); "
            f"got {perplexity}. Choose a smaller perplexity or include more images."
        )
    if pca_components is not None and pca_components < 2:
        raise ValueError(f"pca_components must be None or at least 2; got {pca_components}.")
    resolved = _resolve_method(method)

    total = _OPENTSNE_ITERATIONS if resolved == "opentsne" else 1
    report(progress, "tsne", 0, total, message=f"t-SNE of {n_images} points ({resolved})")
    reduced = _pca(matrix, components=pca_components, seed=seed)
    if resolved == "sklearn":
        embedding = _tsne_sklearn(reduced, perplexity=perplexity, seed=seed)
    else:
        embedding = _tsne_opentsne(reduced, perplexity=perplexity, seed=seed, progress=progress)
    report(progress, "tsne", total, total, message="t-SNE done")
    return np.asarray(embedding, dtype=np.float64)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (cosine similarity 0 with everything)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def cosine_neighbours(reference, query, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` reference rows nearest to each query row by cosine distance (1 - cosine similarity).

    Parameters
    ----------
    reference : ndarray of shape (n_reference, dim)
    query : ndarray of shape (n_query, dim)
    k : int
        Neighbours per query row; clipped to ``n_reference``.

    Returns
    -------
    indices : ndarray of shape (n_query, min(k, n_reference)), int64
        Reference row numbers, nearest first.
    distances : ndarray of shape (n_query, min(k, n_reference)), float32
        Cosine distances in [0, 2], ascending along each row.
    """
    reference_matrix = _as_matrix(reference, name="reference")
    query_matrix = _as_matrix(query, name="query")
    if reference_matrix.shape[1] != query_matrix.shape[1]:
        raise ValueError(
            f"reference and query must have the same feature dimension; "
            f"got {reference_matrix.shape[1]} and {query_matrix.shape[1]}."
        )
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")
    k = min(k, reference_matrix.shape[0])
    unit_reference = _unit_rows(reference_matrix)
    unit_query = _unit_rows(query_matrix)

    indices = np.empty((len(unit_query), k), dtype=np.int64)
    distances = np.empty((len(unit_query), k), dtype=np.float32)
    for start in range(0, len(unit_query), _NEIGHBOUR_CHUNK):
        chunk_distances = np.clip(1.0 - unit_query[start : start + _NEIGHBOUR_CHUNK] @ unit_reference.T, 0.0, 2.0)
        if k < chunk_distances.shape[1]:
            nearest = np.argpartition(chunk_distances, k - 1, axis=1)[:, :k]
        else:
            nearest = np.broadcast_to(np.arange(k), (len(chunk_distances), k))
        nearest_distances = np.take_along_axis(chunk_distances, nearest, axis=1)
        order = np.argsort(nearest_distances, axis=1, kind="stable")
        indices[start : start + len(chunk_distances)] = np.take_along_axis(nearest, order, axis=1)
        distances[start : start + len(chunk_distances)] = np.take_along_axis(nearest_distances, order, axis=1)
    return indices, distances


def embed_new_points(reference_features, reference_embedding, new_features, *, k: int = 10) -> np.ndarray:
    """Place new images on an existing 2-D map: distance-weighted mean of their nearest reference points.

    A cosine-kNN average rather than openTSNE's ``TSNEEmbedding.transform``: it works for maps made
    by either library, needs no fitted t-SNE object kept in memory or on disk, and takes
    milliseconds. Weights are 1 / cosine distance; a new image identical (up to float rounding)
    to reference images lands exactly on their mean position.

    Parameters
    ----------
    reference_features : ndarray of shape (n_reference, dim)
    reference_embedding : ndarray of shape (n_reference, 2)
        The map of ``reference_features``.
    new_features : ndarray of shape (n_new, dim)
    k : int
        Neighbours averaged per new image (clipped to ``n_reference``).

    Returns
    -------
    ndarray of shape (n_new, 2)
    """
    positions = np.asarray(reference_embedding, dtype=np.float64)
    n_reference = np.asarray(reference_features).shape[0]
    if positions.shape != (n_reference, 2):
        raise ValueError(
            f"reference_embedding must have shape ({n_reference}, 2) to match reference_features; "
            f"got {positions.shape}."
        )
    indices, distances = cosine_neighbours(reference_features, new_features, k=k)
    same = distances < _SAME_POINT_DISTANCE
    weights = np.where(same.any(axis=1, keepdims=True), same, 1.0 / np.maximum(distances, _SAME_POINT_DISTANCE))
    weights = weights / weights.sum(axis=1, keepdims=True)
    return np.einsum("mk,mkd->md", weights, positions[indices])


def selection_to_rows(points: list[dict]) -> list[int]:
    """Global row ids of Plotly event points (hover, click, box or lasso selection).

    Each class is its own trace and Plotly numbers points per trace, so ``pointIndex`` is useless
    across traces; every data point carries its global row id as ``customdata[0]`` instead
    (a bare number is accepted too). Points without customdata belong to helper traces (hover
    rings, highlights) and are skipped.

    Parameters
    ----------
    points : list of dict
        Plotly event points, e.g. ``{"curveNumber": 3, "pointIndex": 7, "customdata": [412]}``.

    Returns
    -------
    list of int
        Row ids in first-seen order, duplicates removed (a row can appear in several panels).
    """
    rows: dict[int, None] = {}
    for point in points:
        custom = point.get("customdata")
        if custom is None:
            continue
        row = custom[0] if isinstance(custom, (list, tuple)) else custom
        if isinstance(row, bool) or not isinstance(row, (int, float)) or row != int(row) or row < 0:
            raise ValueError(f"customdata[0] must be a non-negative integer row id; got {row!r} in {point!r}.")
        rows.setdefault(int(row), None)
    return list(rows)
