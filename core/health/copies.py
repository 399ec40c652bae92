"""Copies, near neighbours and leakage: image pairs close in features, and whether their photos agree.

A pair is a candidate when its features' cosine similarity is at or above a threshold (by default from the dataset's
own nearest-neighbour similarities, ``auto_duplicate_threshold``), or when the two files are byte copies (same
SHA-256). It is a *copy* only when the photos agree (a byte copy, or SSIM of grey thumbnails >= ``COPY_SSIM``);
otherwise a *near neighbour*. A copy whose two images sit in different parts of the split is *leakage*
(``classify_pair``).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from core.health.common import MIN_DISTANCE, robust_centre_spread


def auto_duplicate_threshold(nearest_similarity: np.ndarray, *, z: float = 3.0) -> float:
    """A cosine threshold from the dataset's nearest-neighbour similarities (one per image).

    With d = 1 - similarity of each image to its nearest other image, a pair is a near-duplicate when its
    log d lies more than ``z`` robust standard deviations (MAD) below the median log d: much closer than
    images of this dataset usually are to their nearest neighbour. On a log scale because d spans orders
    of magnitude across backbones (0.003 typical for a random-weight EfficientNet-Lite0, 0.15 for the
    pretrained one on Synthetic Flowers); median and MAD because the duplicates themselves are in the sample.
    """
    log_d = np.log(np.clip(1.0 - np.asarray(nearest_similarity, dtype=np.float64), MIN_DISTANCE, None))
    centre, spread = robust_centre_spread(log_d)
    return float(1.0 - np.exp(centre - z * spread))


def neighbour_pairs(unit: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each image's ``k`` nearest other images (cosine), as unique pairs.

    Parameters
    ----------
    unit : ndarray of shape (n, dim)
        Unit-length features (``unit_rows``).

    Returns
    -------
    a, b : ndarray of shape (n_pairs,)
        Positions with a < b.
    similarity : ndarray of shape (n_pairs,)
    nearest : ndarray of shape (n,)
        Each image's similarity to its nearest other image.
    """
    from sklearn.neighbors import NearestNeighbors

    n = len(unit)
    k = min(k, n - 1)
    # Brute force: exact, and scikit-learn chunks the distance matrix. Measured at 20,000 x 1,280 (k=5): 29 s of CPU
    # on the 2-core reference machine (one BLAS pass, 0.5 TFLOP); an approximate index only pays off well beyond that.
    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(unit)
    distance, neighbour = index.kneighbors(unit)
    similarity = 1.0 - distance
    own = np.arange(n)[:, None]
    # Drop each image itself, wherever a byte-identical copy put it in its own list.
    keep = neighbour != own
    first_other = np.argmax(keep, axis=1)
    nearest = similarity[np.arange(n), first_other]
    a = np.broadcast_to(own, neighbour.shape)[keep]
    b = neighbour[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    pairs, first = np.unique(np.stack([lo, hi], axis=1), axis=0, return_index=True)
    return pairs[:, 0], pairs[:, 1], similarity[keep][first].astype(np.float64), nearest.astype(np.float64)


# Two photos are copies when their pictures agree, not just their features: SSIM (scikit-image) of grey thumbnails
# PHOTO_SIDE px square at or above COPY_SSIM. A re-saved JPEG or a resized copy scores above 0.95; different photos of
# one class (other background, other flower count) stay far below, however close a backbone puts their features
# (Synthetic Flowers gave feature cosines of 0.94 for photos that differ at a glance).
PHOTO_SIDE = 64
COPY_SSIM = 0.9


def photo_thumbnails(paths: list, *, side: int = PHOTO_SIDE) -> np.ndarray:
    """Grey ``side`` x ``side`` thumbnails in [0, 1] of image files (the aspect ratio is not kept: a copy resized
    keeps it anyway); an unreadable file gives a row of NaN.

    Returns
    -------
    ndarray of shape (len(paths), side, side), float32
    """
    from PIL import Image

    from core.base.errors import BadImageError
    from core.data.images import load_image

    out = np.full((len(paths), side, side), np.nan, dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            image = load_image(path, draft_size=side).convert("L").resize((side, side), Image.Resampling.BILINEAR)
        except (BadImageError, OSError):
            continue
        out[i] = np.asarray(image, dtype=np.float32) / 255.0
    return out


def photo_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (``skimage.metrics.structural_similarity``) of two thumbnails of shape (side, side) in
    [0, 1]; NaN when either is unreadable."""
    from skimage.metrics import structural_similarity

    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    return float(structural_similarity(a, b, data_range=1.0))


def finite_or_none(value: float) -> float | None:
    return None if not np.isfinite(value) else round(value, 4)  # JSON has no NaN


def byte_duplicate_groups(digests: list[str]) -> list[list[int]]:
    """Positions sharing a content hash, groups of two or more."""
    groups: dict[str, list[int]] = defaultdict(list)
    for position, digest in enumerate(digests):
        groups[digest].append(position)
    return [members for members in groups.values() if len(members) > 1]


def classify_pair(pair: dict, *, part_a: str, part_b: str) -> dict:
    """``pair`` (``{"a", "b", "similarity", "exact", "photo"}``) with the parts of its two images (``part_a``,
    ``part_b``), ``copy`` (a byte copy, or photos that agree: SSIM >= ``COPY_SSIM``) and ``leakage`` (a copy whose
    two images sit in different parts). A pair close in features only is a near neighbour, never leakage."""
    photo = pair.get("photo")
    copy = bool(pair["exact"] or (photo is not None and photo >= COPY_SSIM))
    return {
        **pair,
        "photo": photo,
        "part_a": part_a,
        "part_b": part_b,
        "copy": copy,
        "leakage": copy and part_a != part_b,
    }
