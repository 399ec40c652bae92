"""2-D maps of cached features for the embedding explorer, plus the nearest-neighbour maths it shares.

- ``tsne_embedding``: PCA to 50 dimensions, then t-SNE (openTSNE by default: measured faster than
  scikit-learn at 1,360 and 20,000 points; Barnes-Hut below 10,000 points, FFT from there, which is
  how big maps stay tractable: its cost per iteration grows linearly); from 50,000 points a sample's
  t-SNE with the other points placed on it by openTSNE's ``transform``.
- ``fit_map`` / ``cached_map``: a map by any of ``MAP_METHODS`` (t-SNE, UMAP, PCA) as a ``FeatureMap``
  that also places new images on it (``FeatureMap.place``); ``cached_map`` keeps each map per
  (features, method, parameters) in memory and on disk, so a rerun computes nothing.
- ``embed_new_points``: places new images (uploads) on an existing t-SNE map without recomputing it.
- ``cosine_neighbours``: k nearest reference rows by cosine distance (explorer and Classify page).
- The map component's events (hover, click, box/lasso selection: ``{event, rows}``) are parsed in
  ``ui.hover_scatter.event_from_value``: the engine knows no screen shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import colorcet
import numpy as np

from core.base.errors import FlowerProbeError
from core.base.fileio import atomic_write
from core.base.progress import ProgressCallback, report
from core.base.vectors import unit_rows

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

# From this many points openTSNE's documented recipe for large data sets is followed: t-SNE of a random
# sample of TSNE_SAMPLE_POINTS, then ``TSNEEmbedding.transform`` places the other points on it (their
# affinities to the sample, optimised with the sample held fixed). A full FFT t-SNE of 100,000 points took
# 1,503 s here (load 22-25); the sample keeps the map in minutes while every point is still drawn.
# 20,000 sampled points still resolve 17 classes with over a thousand points each.
TSNE_SAMPLE_FROM = 50_000
TSNE_SAMPLE_POINTS = 20_000
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
            n_components=2,
            perplexity=perplexity,
            init="pca",
            learning_rate="auto",
            random_state=seed,
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
    return tsne.fit(features)


def tsne_sample_rows(n_points: int, *, seed: int) -> np.ndarray | None:
    """The rows a large map's t-SNE is fitted on (ascending), or None when every row is (``TSNE_SAMPLE_FROM``)."""
    if n_points < TSNE_SAMPLE_FROM:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_points, size=TSNE_SAMPLE_POINTS, replace=False))


def _tsne_opentsne_sampled(
    features: np.ndarray, sample: np.ndarray, *, perplexity: float, seed: int, progress: ProgressCallback | None
) -> np.ndarray:
    """t-SNE of ``features[sample]``, then every other row placed on it by openTSNE's ``transform``."""
    fitted = _tsne_opentsne(features[sample], perplexity=perplexity, seed=seed, progress=progress)
    rest = np.setdiff1d(np.arange(len(features)), sample, assume_unique=True)
    report(
        progress,
        "tsne",
        _OPENTSNE_ITERATIONS,
        _OPENTSNE_ITERATIONS + 1,
        message=f"placing the other {len(rest):,} points on the {len(sample):,}-point map",
    )
    embedding = np.empty((len(features), 2))
    embedding[sample] = fitted
    embedding[rest] = fitted.transform(features[rest])
    return embedding


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

    From ``TSNE_SAMPLE_FROM`` points (openTSNE only) t-SNE is fitted on ``TSNE_SAMPLE_POINTS`` rows drawn with
    ``seed`` (``tsne_sample_rows``) and the other rows are placed on that map by openTSNE's ``transform``.

    Parameters
    ----------
    features : ndarray of shape (n_images, dim)
        Cached backbone features.
    perplexity : float
        t-SNE perplexity, roughly the number of neighbours each point keeps close; must be in
        (0, (n_images - 1) / 3]: each point needs 3 x perplexity neighbours.
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
    _check_perplexity(perplexity, n_images)
    if pca_components is not None and pca_components < 2:
        raise ValueError(f"pca_components must be None or at least 2; got {pca_components}.")
    resolved = _resolve_method(method)

    sample = tsne_sample_rows(n_images, seed=seed) if resolved == "opentsne" else None
    total = 1 if resolved == "sklearn" else _OPENTSNE_ITERATIONS + (sample is not None)
    layout = "" if sample is None else f", fitted on {len(sample):,} of them and the rest placed on that map"
    report(progress, "tsne", 0, total, message=f"t-SNE of {n_images:,} points ({resolved}{layout})")
    reduced = _pca(matrix, components=pca_components, seed=seed)
    if resolved == "sklearn":
        embedding = _tsne_sklearn(reduced, perplexity=perplexity, seed=seed)
    elif sample is None:
        embedding = _tsne_opentsne(reduced, perplexity=perplexity, seed=seed, progress=progress)
    else:
        embedding = _tsne_opentsne_sampled(reduced, sample, perplexity=perplexity, seed=seed, progress=progress)
    report(progress, "tsne", total, total, message="t-SNE done")
    return np.asarray(embedding, dtype=np.float64)


def largest_perplexity(n_points: int) -> float:
    """The largest t-SNE perplexity ``n_points`` allow: each point keeps 3 x perplexity neighbours."""
    return (n_points - 1) / 3


def largest_neighbours(n_points: int) -> int:
    """The largest UMAP ``n_neighbors`` ``n_points`` allow: every other point."""
    return n_points - 1


def _check_perplexity(perplexity: float, n_points: int) -> None:
    largest = largest_perplexity(n_points)
    if not 0 < perplexity <= largest:
        raise FlowerProbeError(
            f"perplexity must be greater than 0 and at most (points - 1) / 3 = {largest:g} for {n_points} points "
            f"(t-SNE keeps 3 x perplexity neighbours per point); got {perplexity}. Choose a smaller perplexity "
            f"or include more images."
        )


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
    unit_reference = unit_rows(reference_matrix)
    unit_query = unit_rows(query_matrix)

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


# ----------------------------------------------------------------------------------------------- map methods

# 256 colours made to stay distinct side by side (colorcet's Glasbey palette, its first ten Category10's): class i has
# colour i on every map of a dataset (Explorer panels, the Classify map, the CLI's figures), whatever the method.
# Plotly's Dark24 + Light24 gave three pinks among Oxford 17's 17 classes, and cycled past 48.
CLASS_COLOURS = tuple(colorcet.palette["glasbey_category10"])


def class_colours(n_classes: int) -> list[str]:
    """The colour of each class index, the same on every map (cycling past 48 classes)."""
    return [CLASS_COLOURS[i % len(CLASS_COLOURS)] for i in range(n_classes)]


# Method key -> the name pages and figures show.
MAP_METHODS = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
# Below this a 2-D map says nothing, and UMAP's neighbour graph and t-SNE's perplexity have no room.
MIN_MAP_POINTS = 5
# Bump when a cached map's arrays change meaning, so old files are recomputed rather than misread.
_MAP_FORMAT_VERSION = 1
# Fitted maps kept in this process (UMAP's fitted model cannot go to disk without pickle): two
# Explorer panels x three methods, plus a Classify map or two.
_MEMORY_MAPS = 8


@dataclass(frozen=True)
class MapParams:
    """Parameters of a map; only those of the chosen method enter its cache key (``MapParams.key``)."""

    perplexity: float = 30.0  # t-SNE: openTSNE's and scikit-learn's default
    n_neighbors: int = 15  # UMAP: umap-learn's default, the local-versus-global balance its authors chose
    min_dist: float = 0.1  # UMAP: umap-learn's default; smaller packs clusters tighter
    pca_components: int | None = 50  # before t-SNE and UMAP: denoises and speeds the neighbour search; None skips
    seed: int = 0  # the same features, method and parameters always give the same map

    def key(self, method: str) -> dict:
        """The parameters that change ``method``'s map, as a JSON-ready dict."""
        if method == "pca":
            return {"seed": self.seed}
        shared = {"pca_components": self.pca_components, "seed": self.seed}
        if method == "tsne":
            return {"perplexity": float(self.perplexity), **shared}
        return {"n_neighbors": int(self.n_neighbors), "min_dist": float(self.min_dist), **shared}

    def describe(self, method: str) -> str:
        """One line for captions: ``perplexity 30, PCA to 50 dimensions first``."""
        pca = f", PCA to {self.pca_components} dimensions first" if self.pca_components else ""
        if method == "tsne":
            return f"perplexity {self.perplexity:g}{pca}"
        if method == "umap":
            return f"{self.n_neighbors} neighbours, min_dist {self.min_dist:g}{pca}"
        return "the first two principal components"


def check_map_method(method: str) -> str:
    if method not in MAP_METHODS:
        raise FlowerProbeError(f"method must be one of {', '.join(MAP_METHODS)}; got {method!r}.")
    return method


def fit_map_params(method: str, params: MapParams, n_points: int) -> tuple[MapParams, str]:
    """``params`` shrunk to what ``n_points`` allow (``largest_perplexity``, ``largest_neighbours``: the limits
    ``check_map_params`` enforces), and a note for captions saying so ("" when nothing changed).

    The one rule for small maps: the Explorer's panels, the Classify page's map and whatever else draws one.
    """
    if method == "tsne" and params.perplexity > largest_perplexity(n_points):
        note = f" (perplexity lowered from {params.perplexity:g} for {n_points} points)"
        return replace(params, perplexity=float(largest_perplexity(n_points))), note
    if method == "umap" and params.n_neighbors > largest_neighbours(n_points):
        note = f" (neighbours lowered from {params.n_neighbors} for {n_points} points)"
        return replace(params, n_neighbors=largest_neighbours(n_points)), note
    return params, ""


def check_map_params(method: str, params: MapParams, n_points: int) -> None:
    """Raise ``FlowerProbeError`` naming the parameter, its allowed range and the value when out of range."""
    check_map_method(method)
    if n_points < MIN_MAP_POINTS:
        raise FlowerProbeError(f"A map needs at least {MIN_MAP_POINTS} images; got {n_points}. Choose more images.")
    if params.pca_components is not None and params.pca_components < 2:
        raise FlowerProbeError(f"pca_components must be None or at least 2; got {params.pca_components}.")
    if method == "tsne":
        _check_perplexity(params.perplexity, n_points)
    elif method == "umap":
        if isinstance(params.n_neighbors, bool) or not 2 <= params.n_neighbors <= largest_neighbours(n_points):
            raise FlowerProbeError(
                f"n_neighbors must be from 2 to the number of points - 1 ({largest_neighbours(n_points)}) for "
                f"{n_points} points; "
                f"got {params.n_neighbors}. Choose fewer neighbours or include more images."
            )
        if not 0.0 <= params.min_dist <= 1.0:  # umap-learn requires min_dist <= spread, 1.0 by default
            raise FlowerProbeError(f"min_dist must be from 0 to 1; got {params.min_dist}.")


@dataclass(frozen=True)
class _Linear:
    """``(x - mean) @ components.T``: scikit-learn's PCA transform (no whitening), kept as arrays
    so it can be cached."""

    mean: np.ndarray  # shape (dim,)
    components: np.ndarray  # shape (k, dim)

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        return (np.asarray(matrix, dtype=np.float64) - self.mean) @ self.components.T


def _fit_linear(matrix: np.ndarray, *, components: int, seed: int) -> _Linear:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(components, *matrix.shape), random_state=seed).fit(matrix)
    return _Linear(mean=pca.mean_.astype(np.float64), components=pca.components_.astype(np.float64))


@dataclass(kw_only=True, eq=False, repr=False)  # compared and shown as the object it is: its arrays are large
class FeatureMap:
    """A 2-D map of reference features that can also place new images on it.

    ``embedding`` (n_points, 2) holds the reference points' positions. ``place`` puts new features
    on the map the way its method allows: PCA and UMAP by their own transform (UMAP's fitted model
    lives only in memory; a map read back from disk refits it once, seeded, to place points), t-SNE
    by ``embed_new_points`` (a t-SNE map has no transform of its own in scikit-learn, and this works
    for every t-SNE map, cached or not).
    """

    method: str
    params: MapParams
    embedding: np.ndarray
    reference: np.ndarray  # the features the map was made from (n_points, dim)
    reducer: _Linear | None = None  # the PCA step in front of t-SNE and UMAP, or PCA's own projection
    model: object | None = None  # UMAP's fitted model
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    @property
    def label(self) -> str:
        return MAP_METHODS[self.method]

    def place(self, new_features) -> np.ndarray:
        """Positions of new images on this map.

        Parameters
        ----------
        new_features : ndarray of shape (n_new, dim)
            Features from the same backbone as the reference features.

        Returns
        -------
        ndarray of shape (n_new, 2)
        """
        matrix = _as_matrix(new_features, name="new_features")
        if matrix.shape[1] != self.reference.shape[1]:
            raise FlowerProbeError(
                f"new_features must have the map's feature dimension {self.reference.shape[1]}; got {matrix.shape[1]}."
            )
        if self.method == "tsne":
            return embed_new_points(self.reference, self.embedding, matrix)
        if self.method == "pca":
            return self.reducer(matrix)
        with self._lock:  # umap-learn's transform is not documented as thread-safe; pages share this object
            if self.model is None:
                self.model = _fit_umap(self._reduced(self.reference), self.params).model
            return np.asarray(self.model.transform(self._reduced(matrix)), dtype=np.float64)

    def _reduced(self, matrix: np.ndarray) -> np.ndarray:
        return self.reducer(matrix).astype(np.float32) if self.reducer is not None else matrix


@dataclass(frozen=True)
class _UmapFit:
    embedding: np.ndarray
    model: object


def _fit_umap(matrix: np.ndarray, params: MapParams) -> _UmapFit:
    import umap  # imported here: numba compiles it on first import (~15 s), which only UMAP maps should pay

    # random_state makes umap-learn single-threaded (n_jobs=1 says so) and reproducible; cosine as for
    # every neighbour search here.
    model = umap.UMAP(
        n_components=2,
        n_neighbors=params.n_neighbors,
        min_dist=params.min_dist,
        metric="cosine",
        random_state=params.seed,
        transform_seed=params.seed,
        n_jobs=1,
    )
    embedding = model.fit_transform(matrix)
    return _UmapFit(embedding=np.asarray(embedding, dtype=np.float64), model=model)


def fit_map(
    features, *, method: str = "tsne", params: MapParams = MapParams(), progress: ProgressCallback | None = None
) -> FeatureMap:
    """Compute a 2-D map of ``features`` with ``method`` (no cache; see ``cached_map``).

    Parameters
    ----------
    features : ndarray of shape (n_points, dim)
    method : {"tsne", "umap", "pca"}
        t-SNE keeps neighbourhoods and distorts global distances; PCA is linear and instant; UMAP
        sits between and scales further.
    params : MapParams
    progress : ProgressCallback or None
        Receives ``"map"`` events (and ``"tsne"`` events for t-SNE's iterations).

    Returns
    -------
    FeatureMap
    """
    matrix = _as_matrix(features, name="features")
    n_points, dim = matrix.shape
    check_map_params(method, params, n_points)
    label = MAP_METHODS[method]
    report(progress, "map", 0, 2, message=f"{label} of {n_points:,} points")
    if method == "pca":
        reducer = _fit_linear(matrix, components=2, seed=params.seed)
        result = FeatureMap(method=method, params=params, embedding=reducer(matrix), reference=matrix, reducer=reducer)
    elif method == "tsne":
        reducer = None
        if params.pca_components is not None and dim > params.pca_components:
            reducer = _fit_linear(matrix, components=params.pca_components, seed=params.seed)
        embedding = tsne_embedding(
            reducer(matrix) if reducer else matrix,
            perplexity=params.perplexity,
            pca_components=None,
            seed=params.seed,
            progress=progress,
        )
        result = FeatureMap(method=method, params=params, embedding=embedding, reference=matrix, reducer=reducer)
    else:
        reducer = None
        if params.pca_components is not None and dim > params.pca_components:
            reducer = _fit_linear(matrix, components=params.pca_components, seed=params.seed)
        reduced = reducer(matrix).astype(np.float32) if reducer else matrix
        report(progress, "map", 1, 2, message=f"UMAP of {n_points:,} points: neighbour graph and layout")
        fitted = _fit_umap(reduced, params)
        result = FeatureMap(
            method=method,
            params=params,
            embedding=fitted.embedding,
            reference=matrix,
            reducer=reducer,
            model=fitted.model,
        )
    report(progress, "map", 2, 2, message=f"{label} done")
    return result


def map_cache_key(features, *, method: str, params: MapParams) -> str:
    """Hex digest naming a map: the features' bytes and shape, the method and its parameters."""
    matrix = np.ascontiguousarray(features, dtype=np.float32)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        json.dumps(
            {"v": _MAP_FORMAT_VERSION, "method": method, "params": params.key(method), "shape": list(matrix.shape)},
            sort_keys=True,
        ).encode()
    )
    digest.update(memoryview(matrix).cast("B"))
    return digest.hexdigest()


_memory: OrderedDict[str, FeatureMap] = OrderedDict()
_memory_lock = threading.Lock()


def _read_map(path: Path, *, method: str, params: MapParams, reference: np.ndarray) -> FeatureMap | None:
    try:
        with np.load(path) as data:
            embedding = data["embedding"]
            reducer = _Linear(mean=data["mean"], components=data["components"]) if "mean" in data.files else None
    except (OSError, ValueError, KeyError):  # absent, or damaged: recompute
        return None
    if embedding.shape != (len(reference), 2):
        return None
    return FeatureMap(method=method, params=params, embedding=embedding, reference=reference, reducer=reducer)


def _write_map(path: Path, feature_map: FeatureMap) -> None:
    arrays = {"embedding": feature_map.embedding}
    if feature_map.reducer is not None:
        arrays |= {"mean": feature_map.reducer.mean, "components": feature_map.reducer.components}
    # a file object stops numpy from appending ".npz" to the temp name
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def cached_map(
    features,
    *,
    method: str = "tsne",
    params: MapParams = MapParams(),
    cache_dir: str | os.PathLike | None,
    progress: ProgressCallback | None = None,
    compute: bool = True,
) -> FeatureMap | None:
    """``fit_map``, remembered per (features, method, parameters) in this process and under ``cache_dir``.

    A map already made is returned at once (a ``"map"`` event says it came from the cache); with
    ``cache_dir`` None only the in-process copy is kept. Files are ``<cache_dir>/<key>.npz``.
    ``compute`` False only looks the map up: None when it was not made yet (a page then queues the
    fit in the job runner rather than running it in its own thread).
    """
    matrix = _as_matrix(features, name="features")
    check_map_params(method, params, matrix.shape[0])
    key = map_cache_key(matrix, method=method, params=params)
    with _memory_lock:
        found = _memory.get(key)
        if found is not None:
            _memory.move_to_end(key)
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    if found is None and path is not None:
        found = _read_map(path, method=method, params=params, reference=matrix)
    if found is not None:
        report(progress, "map", 2, 2, message=f"{MAP_METHODS[method]} map from cache", from_cache=True)
    elif not compute:
        return None
    else:
        found = fit_map(matrix, method=method, params=params, progress=progress)
        if path is not None:
            _write_map(path, found)
    with _memory_lock:
        _memory[key] = found
        while len(_memory) > _MEMORY_MAPS:
            _memory.popitem(last=False)
    return found


# ----------------------------------------------------------------------------------------------- static figure

# Pixels of the static map: 1,600 x 1,000 reads well on a slide and in a two-column paper at 300 dpi.
_FIGURE_SIZE = (1600, 1000)
_LEGEND_PX = 360  # the legend column on the right: 17 class names of up to ~30 characters
_POINT_RADIUS = 4


def map_png(embedding, labels, *, class_names, title: str) -> bytes:
    """A static PNG of a map: one dot per image in its class colour (``class_colours``), a legend and a title.

    Drawn with Pillow: this needs nothing but dots, text and a legend, and the project's plotting
    library, Plotly, needs the kaleido package (not installed) to write images.

    Parameters
    ----------
    embedding : ndarray of shape (n_points, 2)
    labels : ndarray of shape (n_points,), class index of each point
    class_names : sequence of str
    title : str
    """
    import io

    from PIL import Image, ImageDraw, ImageFont

    positions = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(labels)
    if positions.ndim != 2 or positions.shape[1] != 2 or len(labels) != len(positions):
        raise ValueError(f"embedding must be (n, 2) and labels (n,); got {positions.shape} and {labels.shape}.")
    width, height = _FIGURE_SIZE
    image = Image.new("RGB", _FIGURE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    font, title_font = ImageFont.load_default(size=18), ImageFont.load_default(size=26)
    draw.text((24, 16), title, fill="#222222", font=title_font)
    top, margin = 70, 24
    plot_w, plot_h = width - _LEGEND_PX - 2 * margin, height - top - margin
    low, span = positions.min(axis=0), np.ptp(positions, axis=0)
    scale = min(plot_w / span[0] if span[0] else 1.0, plot_h / span[1] if span[1] else 1.0)  # equal axes
    colours = class_colours(len(class_names))
    for (x, y), label in zip(positions, labels):
        px = margin + (x - low[0]) * scale + (plot_w - span[0] * scale) / 2
        py = top + plot_h - ((y - low[1]) * scale + (plot_h - span[1] * scale) / 2)  # y up, as on screen maps
        draw.ellipse(
            (px - _POINT_RADIUS, py - _POINT_RADIUS, px + _POINT_RADIUS, py + _POINT_RADIUS), fill=colours[label]
        )
    legend_x = width - _LEGEND_PX + margin
    for index, name in enumerate(class_names):
        y = top + index * 28
        draw.ellipse((legend_x, y + 4, legend_x + 14, y + 18), fill=colours[index])
        draw.text((legend_x + 24, y), str(name)[:30], fill="#222222", font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
