"""Agreement measures of two representations of the same images; row i of both arrays is the same image.

- ``nearest_neighbours``: each image's k most similar other images by cosine similarity (itself left out).
- ``neighbour_agreement``: per image, |kNN_A(i) ∩ kNN_B(i)| / k. Its mean over images is ``mutual_knn_alignment``,
  the mutual k-NN alignment of Huh et al. (2024; minyoungg/platonic-rep, ``mutual_knn``), k = 10 by default.
  Two unrelated spaces share k / (n - 1) of each image's neighbours on average (``chance_neighbour_agreement``).
- ``linear_cka``: centred kernel alignment with a linear kernel and the unbiased HSIC estimator of Song et al.
  (2012, eq. 5): the debiased CKA of Nguyen et al. (2021), platonic-rep's ``unbiased_cka``. Computed from the
  features' d x d cross-products, never an n x n Gram matrix, so 20,000 images fit in memory.
- ``error_consistency``: Cohen's kappa between two runs' right/wrong on the same test images (Geirhos et al. 2020;
  bethgelab/model-vs-human ``modelvshuman/plotting/analyses.py``): kappa = (c_obs - c_exp) / (1 - c_exp) with
  c_exp = p_A p_B + (1 - p_A)(1 - p_B) and c_obs the share of images both get right or both get wrong.

95 % percentile bootstrap intervals over images come with the mean neighbour agreement (resampling the per-image
scores; the neighbourhoods themselves are those of all n images) and with kappa, where a resample costs one mean
over a vector. CKA gets none: every resample is a full recomputation, and a resample repeats images, which the
unbiased estimator would count as distinct pairs of identical images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.preprocessing import normalize

from core.base.bootstrap import CONFIDENCE, N_RESAMPLES, percentile_interval
from core.base.errors import FlowerProbeError

DEFAULT_K = 10  # platonic-rep's default, and DINOv2's smallest k-NN k
# Similarities held at once by the neighbour search: 16M float32 = 64 MB (838 query rows at 20,000 images).
BLOCK_ELEMENTS = 1 << 24
CKA_ESTIMATOR = "linear kernel, the unbiased HSIC of Song et al. 2012"


# ----------------------------------------------------------------------------------------------- validation


def _features(features: np.ndarray, name: str, *, at_least: int = 2) -> np.ndarray:
    array = np.asarray(features)
    if array.ndim != 2 or array.shape[0] < at_least or array.shape[1] < 1:
        raise FlowerProbeError(
            f"{name} must be a 2-d array of shape (n_images, dim) with at least {at_least} images, "
            f"got shape {array.shape}."
        )
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise FlowerProbeError(f"{name} must hold numbers, got dtype {array.dtype}.")
    if not np.isfinite(array).all():
        raise FlowerProbeError(f"{name} must hold finite numbers, got NaN or infinite values.")
    return array


def _pair(features_a: np.ndarray, features_b: np.ndarray, *, at_least: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a = _features(features_a, "features_a", at_least=at_least)
    b = _features(features_b, "features_b", at_least=at_least)
    if len(a) != len(b):
        raise FlowerProbeError(
            f"features_a and features_b must describe the same images row by row, got {len(a)} and {len(b)} rows "
            "(core.agreement.pairs matches two feature sets by image)."
        )
    return a, b


def _check_k(k: int, n_images: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n_images:
        raise FlowerProbeError(
            f"k must be an integer from 1 to {n_images - 1} (smaller than the {n_images} images: each image's "
            f"neighbours are the other images), got {k!r}."
        )


def _check_resampling(seed: int, n_resamples: int) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 0:
        raise FlowerProbeError(f"n_resamples must be an integer >= 0 (0: no interval), got {n_resamples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise FlowerProbeError(f"seed must be an integer, got {seed!r}.")


# ----------------------------------------------------------------------------------------------- neighbours


def nearest_neighbours(features: np.ndarray, *, k: int = DEFAULT_K) -> np.ndarray:
    """Each image's ``k`` nearest other images by cosine similarity, nearest first.

    Parameters
    ----------
    features : ndarray of shape (n_images, dim)
    k : int
        Neighbours per image, from 1 to n_images - 1; the image itself is never its own neighbour.

    Returns
    -------
    ndarray of shape (n_images, k), int64
        Row indices into ``features``.
    """
    x = _features(features, "features")
    _check_k(k, len(x))
    unit = normalize(x.astype(np.float32, copy=False))
    n, k = len(unit), int(k)
    neighbours = np.empty((n, k), dtype=np.int64)
    # A blocked matmul rather than scikit-learn's NearestNeighbors (brute, Euclidean on unit vectors): 3x faster at
    # 1,360 images on 2 cores (0.3 s against 1.0 s, measured side by side), with the same bounded memory.
    block = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, n, block):
        similarity = unit[start : start + block] @ unit.T  # (block, n)
        rows = np.arange(len(similarity))
        similarity[rows, rows + start] = -np.inf  # never its own neighbour, even among exact duplicates
        top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1, kind="stable")
        neighbours[start : start + block] = np.take_along_axis(top, order, axis=1)
    return neighbours


def shared_neighbours(neighbours_a: np.ndarray, neighbours_b: np.ndarray) -> np.ndarray:
    """Per image, how many of its neighbours the two lists share.

    Parameters
    ----------
    neighbours_a, neighbours_b : ndarray of shape (n_images, k), int
        Neighbour indices per image (``nearest_neighbours``), no repeats within a row.

    Returns
    -------
    ndarray of shape (n_images,), int64
    """
    a, b = np.asarray(neighbours_a, dtype=np.int64), np.asarray(neighbours_b, dtype=np.int64)
    if a.ndim != 2 or a.shape != b.shape:
        raise FlowerProbeError(
            "neighbours_a and neighbours_b must be (n_images, k) arrays of the same shape, "
            f"got {a.shape} and {b.shape}."
        )
    n = len(a)
    # One membership test over the whole table: neighbour j of image i becomes the number i * n + j.
    offsets = np.arange(n, dtype=np.int64)[:, None] * max(n, int(max(a.max(initial=0), b.max(initial=0))) + 1)
    return np.isin(a + offsets, b + offsets).sum(axis=1)


def neighbour_agreement(features_a: np.ndarray, features_b: np.ndarray, *, k: int = DEFAULT_K) -> np.ndarray:
    """Per image, the share of its ``k`` nearest neighbours (cosine, itself left out) the two spaces agree on.

    Parameters
    ----------
    features_a : ndarray of shape (n_images, dim_a)
    features_b : ndarray of shape (n_images, dim_b)
        The same images in the same order (``core.agreement.pairs`` matches two cached sets).
    k : int
        Neighbours per image, from 1 to n_images - 1 (10 by default).

    Returns
    -------
    ndarray of shape (n_images,), float64
        |kNN_A(i) ∩ kNN_B(i)| / k, from 0 (no neighbour in common) to 1 (the same k neighbours).
    """
    a, b = _pair(features_a, features_b)
    _check_k(k, len(a))
    return shared_neighbours(nearest_neighbours(a, k=k), nearest_neighbours(b, k=k)) / int(k)


def mutual_knn_alignment(features_a: np.ndarray, features_b: np.ndarray, *, k: int = DEFAULT_K) -> float:
    """Mutual k-NN alignment: the mean of ``neighbour_agreement`` over images (1: identical neighbourhoods).

    Parameters
    ----------
    features_a : ndarray of shape (n_images, dim_a)
    features_b : ndarray of shape (n_images, dim_b)
    k : int
    """
    return float(neighbour_agreement(features_a, features_b, k=k).mean())


def chance_neighbour_agreement(n_images: int, *, k: int = DEFAULT_K) -> float:
    """The expected neighbour agreement of two unrelated spaces: each of A's k neighbours is among B's k of the
    n - 1 other images with probability k / (n - 1)."""
    if isinstance(n_images, bool) or not isinstance(n_images, (int, np.integer)) or n_images < 2:
        raise FlowerProbeError(f"n_images must be an integer >= 2, got {n_images!r}.")
    _check_k(k, n_images)
    return k / (n_images - 1)


# ----------------------------------------------------------------------------------------------- CKA


def _hsic_unbiased_linear(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012) eq. 5 for K = x xᵀ, L = y yᵀ, from d x d products only.

    With K~ and L~ the Gram matrices with zeroed diagonals:
    tr(K~L~) = ||xᵀy||_F² - Σ_i |x_i|² |y_i|²;  1ᵀK~1 = |Σ_i x_i|² - Σ_i |x_i|²;  K~1 = x (xᵀ1) - |x_i|².
    """
    n = len(x)
    norms_x, norms_y = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    trace = float(np.sum((x.T @ y) ** 2) - norms_x @ norms_y)
    sum_x, sum_y = x.sum(axis=0), y.sum(axis=0)
    row_x, row_y = x @ sum_x - norms_x, y @ sum_y - norms_y  # K~1 and L~1
    total_x, total_y = row_x.sum(), row_y.sum()
    hsic = trace + total_x * total_y / ((n - 1) * (n - 2)) - 2 * float(row_x @ row_y) / (n - 2)
    return hsic / (n * (n - 3))


def linear_cka(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Debiased linear CKA: HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L)) with K = A Aᵀ, L = B Bᵀ.

    HSIC_u is the unbiased estimator of Song et al. (2012, eq. 5), as in Nguyen et al. (2021) and
    platonic-rep's ``unbiased_cka``. 1 means the same geometry up to rotation and isotropic scaling; two unrelated
    spaces score near 0 (slightly below is possible: the estimator is unbiased, not positive). The features are
    used as they are (not L2-normalised); centring them first changes nothing but rounding.

    Parameters
    ----------
    features_a : ndarray of shape (n_images, dim_a)
    features_b : ndarray of shape (n_images, dim_b)
        The same images in the same order; at least 4 (the estimator divides by n - 3).

    Returns
    -------
    float

    Raises
    ------
    FlowerProbeError
        Bad shapes, or a set whose features do not vary across images (CKA is undefined then).
    """
    a, b = _pair(features_a, features_b, at_least=4)
    # float64 and centred: the estimator subtracts large sums, and centring keeps them small.
    a = a.astype(np.float64) - a.mean(axis=0, dtype=np.float64)
    b = b.astype(np.float64) - b.mean(axis=0, dtype=np.float64)
    self_a, self_b = _hsic_unbiased_linear(a, a), _hsic_unbiased_linear(b, b)
    for name, value in (("features_a", self_a), ("features_b", self_b)):
        if not value > 0:
            raise FlowerProbeError(
                f"{name} barely varies across these images (HSIC {value:.3g}): CKA is undefined for it."
            )
    return float(_hsic_unbiased_linear(a, b) / np.sqrt(self_a * self_b))


# ----------------------------------------------------------------------------------------------- error consistency


def _correct_vector(correct: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(correct)
    if array.ndim != 1 or len(array) == 0:
        raise FlowerProbeError(
            f"{name} must be a non-empty 1-d array of right/wrong per test image, got shape {array.shape}."
        )
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise FlowerProbeError(
            f"{name} must hold booleans (or 0 and 1), got values such as {array[~np.isin(array, (0, 1))][0]!r}."
        )
    return array.astype(bool)


def kappa(observed: float | np.ndarray, expected: float | np.ndarray) -> float | np.ndarray:
    """Error consistency from its two rates: (c_obs - c_exp) / (1 - c_exp), and 1 where c_obs = 1.

    As model-vs-human: runs that agree on every image have kappa 1 (then c_exp may be 1 too, and the ratio 0 / 0).
    """
    observed, expected = np.asarray(observed, dtype=float), np.asarray(expected, dtype=float)
    value = np.divide(
        observed - expected, 1 - expected, out=np.ones(np.broadcast(observed, expected).shape), where=observed < 1
    )
    return float(value) if value.ndim == 0 else value


def _kappa_statistic(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    p_a, p_b = a.mean(axis=axis), b.mean(axis=axis)
    observed = (a == b).mean(axis=axis)
    return kappa(observed, p_a * p_b + (1 - p_a) * (1 - p_b))


@dataclass(frozen=True)
class ErrorConsistency:
    """Two runs' right/wrong on the same test images: Cohen's kappa and the counts behind it (rates in 0..1)."""

    n_images: int
    accuracy_a: float  # p_A
    accuracy_b: float  # p_B
    observed: float  # c_obs: share of images both get right or both get wrong
    expected: float  # c_exp = p_A p_B + (1 - p_A)(1 - p_B): c_obs of two independent runs with these accuracies
    kappa: float
    interval: tuple[float, float] | None  # 95 % paired bootstrap over test images; None without resamples
    both_right: int
    both_wrong: int
    only_a_right: int
    only_b_right: int

    def to_dict(self) -> dict:
        return asdict(self)


def error_consistency(
    correct_a: np.ndarray, correct_b: np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> ErrorConsistency:
    """Error consistency (Cohen's kappa) of two runs on the same test images, with a paired bootstrap interval.

    Parameters
    ----------
    correct_a, correct_b : ndarray of shape (n_test,), bool
        Whether each run classified each test image right; the same images in the same order.
    seed, n_resamples : int
        The bootstrap's generator seed and resamples (0: no interval).

    Returns
    -------
    ErrorConsistency
        kappa > 0: they are right and wrong on the same images more often than two independent runs with these
        accuracies would be; 0: as often; < 0: less often.
    """
    a, b = _correct_vector(correct_a, "correct_a"), _correct_vector(correct_b, "correct_b")
    if len(a) != len(b):
        raise FlowerProbeError(
            f"correct_a and correct_b must score the same test images, got {len(a)} and {len(b)} images."
        )
    _check_resampling(seed, n_resamples)
    p_a, p_b = float(a.mean()), float(b.mean())
    observed = float((a == b).mean())
    expected = p_a * p_b + (1 - p_a) * (1 - p_b)
    interval = None
    if n_resamples and observed == 1:  # every resample agrees on every image too
        interval = (1.0, 1.0)
    elif n_resamples:
        interval = percentile_interval(
            (a.astype(float), b.astype(float)), _kappa_statistic, paired=True, seed=seed, n_resamples=n_resamples
        )
    return ErrorConsistency(
        n_images=len(a),
        accuracy_a=p_a,
        accuracy_b=p_b,
        observed=observed,
        expected=expected,
        kappa=kappa(observed, expected),
        interval=interval,
        both_right=int(np.sum(a & b)),
        both_wrong=int(np.sum(~a & ~b)),
        only_a_right=int(np.sum(a & ~b)),
        only_b_right=int(np.sum(~a & b)),
    )


# ----------------------------------------------------------------------------------------------- together


def mean_interval(values: np.ndarray, *, seed: int = 0, n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of per-image ``values`` (shape (n_images,))."""
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or len(data) == 0:
        raise FlowerProbeError(f"values must be a non-empty 1-d array, got shape {data.shape}.")
    _check_resampling(seed, n_resamples)
    if np.all(data == data[0]):  # every resample has this mean
        return float(data[0]), float(data[0])
    return percentile_interval((data,), np.mean, seed=seed, n_resamples=n_resamples)


@dataclass(frozen=True)
class FeatureAgreement:
    """How two feature spaces of the same n images agree: neighbourhoods (per image and on average) and CKA."""

    n_images: int
    k: int
    mutual_knn: float  # mean neighbour agreement, 0..1
    mutual_knn_interval: tuple[float, float]  # 95 % bootstrap over images
    chance: float  # what two unrelated spaces would score: k / (n - 1)
    cka: float
    per_image: np.ndarray = field(repr=False, compare=False)  # (n_images,) neighbour agreement

    def to_dict(self) -> dict:
        """Everything but the per-image scores, JSON-ready."""
        return {
            "n_images": self.n_images,
            "k": self.k,
            "mutual_knn": self.mutual_knn,
            "mutual_knn_interval": list(self.mutual_knn_interval),
            "chance": self.chance,
            "cka": self.cka,
            "cka_estimator": CKA_ESTIMATOR,
        }


def feature_agreement(
    features_a: np.ndarray,
    features_b: np.ndarray,
    *,
    k: int = DEFAULT_K,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> FeatureAgreement:
    """Neighbour agreement per image and on average (with its interval) and debiased linear CKA.

    Parameters
    ----------
    features_a : ndarray of shape (n_images, dim_a)
    features_b : ndarray of shape (n_images, dim_b)
        The same images in the same order, at least 4.
    k : int
        Neighbours per image, from 1 to n_images - 1.
    seed, n_resamples : int
        For the bootstrap interval of the mean neighbour agreement.
    """
    a, b = _pair(features_a, features_b, at_least=4)
    _check_k(k, len(a))
    _check_resampling(seed, n_resamples)
    per_image = neighbour_agreement(a, b, k=k)
    mean = float(per_image.mean())
    return FeatureAgreement(
        n_images=len(a),
        k=int(k),
        mutual_knn=mean,
        mutual_knn_interval=mean_interval(per_image, seed=seed, n_resamples=n_resamples)
        if n_resamples
        else (mean, mean),
        chance=chance_neighbour_agreement(len(a), k=k),
        cka=linear_cka(a, b),
        per_image=per_image,
    )


# ----------------------------------------------------------------------------------------------- in words


def _percent(value: float, *, decimals: int | None = None) -> str:
    """``41 %``; one decimal below 9.5 % (``0.7 %``), where whole points would say 1 % or 0 %."""
    decimals = (0 if value * 100 >= 9.5 or value == 0 else 1) if decimals is None else decimals
    return f"{value * 100:.{decimals}f} %"


def neighbour_sentence(agreement: FeatureAgreement) -> str:
    """``Their neighbourhoods agree on 41 % of neighbours (95 % CI 39 to 43 %; ...)`` (plain text)."""
    low, high = agreement.mutual_knn_interval
    decimals = 0 if high * 100 >= 9.5 else 1
    return (
        f"Their neighbourhoods agree on {_percent(agreement.mutual_knn, decimals=decimals)} of neighbours "
        f"({CONFIDENCE * 100:.0f} % CI {low * 100:.{decimals}f} to {_percent(high, decimals=decimals)}; each image's "
        f"{agreement.k} nearest by cosine among {agreement.n_images:,} images; two unrelated spaces would share "
        f"{_percent(agreement.chance)})."
    )


def cka_sentence(agreement: FeatureAgreement) -> str:
    """``CKA 0.63 (debiased linear CKA: ...)`` (plain text)."""
    return (
        f"CKA {agreement.cka:.2f} (debiased linear CKA with the unbiased HSIC of Song et al. 2012: 1 is the same "
        "geometry up to rotation and scale, 0 unrelated)."
    )


def kappa_sentence(consistency: ErrorConsistency) -> str:
    """``They make the same mistakes more often than chance would, kappa 0.38 (...)`` (plain text)."""
    c = consistency
    if c.only_a_right + c.only_b_right == 0:
        head = f"They are right and wrong on exactly the same test images, kappa {c.kappa:.2f}"
    else:
        low, high = c.interval if c.interval else (c.kappa, c.kappa)
        if low > 0:
            how = "more often than chance would"
        elif high < 0:
            how = "less often than chance would"
        else:
            how = "about as often as chance would"
        # Three decimals where two would print an interval that excludes 0 as "0.00 to 0.01".
        decimals = 3 if max(abs(low), abs(high)) < 0.05 else 2
        head = f"They make the same mistakes {how}, kappa {c.kappa:.{decimals}f}"
        if c.interval:
            head += f" ({CONFIDENCE * 100:.0f} % CI {low:.{decimals}f} to {high:.{decimals}f})"
    agree = c.both_right + c.both_wrong
    return (
        f"{head}: they agree on {agree:,} of {c.n_images:,} test images ({_percent(c.observed)}; both right on "
        f"{c.both_right:,}, both wrong on {c.both_wrong:,}), where two independent runs with these accuracies would "
        f"agree on {_percent(c.expected)}."
    )
