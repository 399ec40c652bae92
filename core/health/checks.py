"""Data health from a backbone's cached features: likely label errors, near-duplicates and leakage, outliers.

Three checks, all on the features ``core.features.extract`` cached (no forward pass here):

- **label issues**: out-of-sample class probabilities from K-fold cross-validated logistic regression on
  the training and validation images (the test part stays untouched), handed to cleanlab's confident
  learning (``cleanlab.filter.find_label_issues``, ``cleanlab.rank.get_label_quality_scores``);
- **copies, near neighbours and leakage**: image pairs whose features have a cosine similarity above a threshold,
  plus exact byte copies (same SHA-256). A pair is a *copy* only when the photos agree (a byte copy, or SSIM of
  grey thumbnails >= ``COPY_SSIM``, scikit-image); otherwise it is a *near neighbour* (close in features only). A
  copy whose two images sit in different parts of the split (train/val/test) is leakage. The default threshold
  comes from the dataset's own distribution of nearest-neighbour similarities (``auto_duplicate_threshold``), since
  a random-weight backbone puts every pair near cosine 1 and a pretrained one spreads them out;
- **outliers**: the cosine distance of each image to its k-th nearest training image, ranked.

``dataset_health`` runs them for one (dataset, backbone, weights, variant) and caches the ``HealthReport``
as one JSON file per input in ``<workspace>/health/`` (written atomically, keyed on the dataset
fingerprint, the features and every parameter), so a rerun is a file read. Images the user excluded
(``core.data.exclusions``) are skipped and listed; the features stay those of the whole dataset, so excluding
an image never forces a new extraction.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.base.errors import DatasetError, FlowerProbeError, MissingFileError
from core.base.fileio import atomic_write, file_digest
from core.base.progress import ProgressCallback, report
from core.base.vectors import unit_rows
from core.base.workspace import Workspace
from core.data.datasets import DEFAULT_SPLIT, SPLIT_PARTS, Dataset, load_dataset
from core.data.exclusions import apply_exclusions, relative_path

if TYPE_CHECKING:
    from core.backbones.resolved import ResolvedBackbone

# Bump when an analysis changes: older cached reports then miss.
HEALTH_FORMAT_VERSION = 2  # 2: pairs carry the photos' SSIM (copies vs near neighbours)
ISSUE_TYPES = ("label", "duplicate", "outlier")
HEALTH_DIRNAME = "health"
# log distances are clipped here: byte copies have distance 0, whose log would swamp the median.
_MIN_DISTANCE = 1e-6
# The robust standard deviation of a normal distribution is 1.4826 median absolute deviations.
_MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class HealthConfig:
    """Parameters of one health analysis; every field is part of the cache key."""

    split: str = DEFAULT_SPLIT  # which train/val/test split decides "test stays untouched" and what leakage is
    folds: int = 5  # cleanlab's own default for cross-validated probabilities: each model sees 80 % of train+val
    seed: int = 0  # fold assignment
    # LogisticRegression's C on standardised features. 0.1 instead of scikit-learn's 1.0: on 1,280-d features
    # and a few hundred images it found the same flipped labels (Synthetic Flowers, EfficientNet-Lite0) in about
    # half the lbfgs time, since a stronger penalty converges sooner on nearly separable data.
    regularisation: float = 0.1
    duplicate_threshold: float | None = None  # cosine; None: auto_duplicate_threshold of this dataset
    duplicate_z: float = 3.0  # robust standard deviations below the typical nearest-neighbour distance (auto threshold)
    neighbours: int = 5  # nearest neighbours kept per image as duplicate candidates (what the slider can reach)
    outlier_k: int = 5  # k-th nearest training image: beyond a few copies or a small cluster of odd images
    outlier_z: float = 3.0  # robust standard deviations above the typical k-th-neighbour distance: flagged

    def validate(self) -> None:
        checks = (
            ("folds", self.folds, isinstance(self.folds, int) and self.folds >= 2, "an integer of at least 2"),
            ("regularisation", self.regularisation, self.regularisation > 0, "a positive number"),
            (
                "neighbours",
                self.neighbours,
                isinstance(self.neighbours, int) and self.neighbours >= 1,
                "a positive integer",
            ),
            (
                "outlier_k",
                self.outlier_k,
                isinstance(self.outlier_k, int) and self.outlier_k >= 1,
                "a positive integer",
            ),
            (
                "duplicate_threshold",
                self.duplicate_threshold,
                self.duplicate_threshold is None or -1.0 <= self.duplicate_threshold <= 1.0,
                "a cosine similarity in [-1, 1] or None (auto)",
            ),
        )
        for name, value, ok, allowed in checks:
            if not ok:
                raise FlowerProbeError(f"{name} must be {allowed}, got {value!r}.")


# ----------------------------------------------------------------------------------------------- maths


def _robust_centre_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation: a handful of duplicates or outliers cannot move them."""
    centre = float(np.median(values))
    return centre, _MAD_TO_SD * float(np.median(np.abs(values - centre)))


def auto_duplicate_threshold(nearest_similarity: np.ndarray, *, z: float = 3.0) -> float:
    """A cosine threshold from the dataset's nearest-neighbour similarities (one per image).

    With d = 1 - similarity of each image to its nearest other image, a pair is a near-duplicate when its
    log d lies more than ``z`` robust standard deviations (MAD) below the median log d: much closer than
    images of this dataset usually are to their nearest neighbour. On a log scale because d spans orders
    of magnitude across backbones (0.003 typical for a random-weight EfficientNet-Lite0, 0.15 for the
    pretrained one on Synthetic Flowers); median and MAD because the duplicates themselves are in the sample.
    """
    log_d = np.log(np.clip(1.0 - np.asarray(nearest_similarity, dtype=np.float64), _MIN_DISTANCE, None))
    centre, spread = _robust_centre_spread(log_d)
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


def _finite_or_none(value: float) -> float | None:
    return None if not np.isfinite(value) else round(value, 4)  # JSON has no NaN


def byte_duplicate_groups(digests: list[str]) -> list[list[int]]:
    """Positions sharing a content hash, groups of two or more."""
    groups: dict[str, list[int]] = defaultdict(list)
    for position, digest in enumerate(digests):
        groups[digest].append(position)
    return [members for members in groups.values() if len(members) > 1]


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


def out_of_sample_probabilities(
    features: np.ndarray, labels: np.ndarray, *, folds: int, seed: int, regularisation: float
) -> np.ndarray:
    """Class probabilities of each image from a logistic regression that never saw it (K-fold cross-validation).

    Parameters
    ----------
    features : ndarray of shape (n, dim)
    labels : ndarray of shape (n,), int in [0, n_classes)

    Returns
    -------
    ndarray of shape (n, n_classes)
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    # Standardised: a random-weight backbone's raw features are nearly parallel vectors of norm ~1,000.
    model = make_pipeline(StandardScaler(), LogisticRegression(C=regularisation, max_iter=500))
    # One BLAS/OpenMP thread: these fits are small (a few hundred x 1,280), and threads spinning on a busy
    # machine made one fit 20 s of CPU instead of 0.26 s (measured: 270 x 1,280, 17 classes, 2 loaded cores).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # An unconverged fold still ranks images usefully; the warning would only flood the log.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cross_val_predict(
            model,
            features,
            labels,
            cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
            method="predict_proba",
        )


def _check_folds(labels: np.ndarray, class_names: tuple[str, ...], folds: int) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise DatasetError(
            f"Label issues need at least two classes with images in the training and validation parts; "
            f"this dataset has {len(present)}. Add images of other classes."
        )
    single = [class_names[c] for c in present if counts[c] == 1]
    if single:
        raise DatasetError(
            f"Class(es) {', '.join(repr(c) for c in single)} have a single image in the training and validation parts: "
            f"cross-validation cannot hold it out and still learn the class. Add images to them, or exclude them."
        )
    small = [(class_names[c], int(counts[c])) for c in present if counts[c] < folds]
    if small:
        fewest = min(count for _, count in small)
        raise DatasetError(
            f"The dataset is too small for folds={folds}: class(es) "
            f"{', '.join(f'{name!r} ({count})' for name, count in small)} have fewer training and validation images "
            f"than folds. Use folds={max(2, fewest)} or fewer (--folds), or add images."
        )


def label_issues(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    class_names: tuple[str, ...],
    folds: int,
    seed: int,
    regularisation: float,
) -> dict[str, np.ndarray]:
    """cleanlab's label issues from out-of-sample probabilities.

    Parameters
    ----------
    features : ndarray of shape (n, dim)
    labels : ndarray of shape (n,), given class indices into ``class_names``

    Returns
    -------
    dict of ndarray of shape (n,)
        ``score`` (cleanlab's self-confidence label quality: low = likely wrong), ``suggested`` (the most probable
        class, an index into ``class_names``), ``flagged`` (bool: cleanlab's ``find_label_issues``).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    _check_folds(labels, class_names, folds)
    # cleanlab wants labels 0..K-1 with every class present: renumber the classes that have images here.
    present, compact = np.unique(labels, return_inverse=True)
    probabilities = out_of_sample_probabilities(
        features, compact, folds=folds, seed=seed, regularisation=regularisation
    )
    score = get_label_quality_scores(compact, probabilities)
    flagged = find_label_issues(compact, probabilities, n_jobs=1)  # n_jobs=1: no process pool inside a server thread
    return {
        "score": score,
        "suggested": present[probabilities.argmax(axis=1)],
        "flagged": np.asarray(flagged, dtype=bool),
    }


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class HealthReport:
    """One health analysis. Images are numbered by position in ``paths`` (the analysed images).

    label_issues : training and validation images, ``{"image", "given", "suggested", "score", "flagged"}``,
        lowest score first
    pairs : duplicate candidates ``{"a", "b", "similarity", "exact"}`` (each image's nearest neighbours and
        every byte copy)
    outliers : every image, ``{"image", "score", "flagged"}``, highest distance first
    """

    dataset_key: str
    dataset_name: str
    fingerprint: str  # of the dataset as analysed (exclusions applied)
    backbone: str
    weights: str
    weights_tag: str
    precision: str
    variant: str | None
    features_file: str  # the feature cache's name under <workspace>/features
    config: dict
    class_names: list[str]
    paths: list[str]  # relative to the dataset folder, POSIX
    parts: list[str]  # "train" / "val" / "test" of each image in config["split"] ("" when in none)
    labels: list[int]
    label_issues: list[dict]
    pairs: list[dict]
    duplicate_threshold: float
    threshold_source: str  # how duplicate_threshold was chosen
    outliers: list[dict]
    outlier_cutoff: float
    skipped: list[list[str]]  # [relative path, reason]: excluded by the user, or unreadable
    timings: dict
    created_at: float
    from_cache: bool = field(default=False, compare=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("from_cache")
        return data

    @classmethod
    def from_dict(cls, data: dict, *, from_cache: bool = False) -> HealthReport:
        return cls(**data, from_cache=from_cache)

    def duplicates(self, threshold: float | None = None) -> list[dict]:
        """Pairs at or above ``threshold`` (default: the report's) and every byte copy: copies first, then near
        neighbours, most similar first.

        Each pair also carries ``part_a``, ``part_b``, ``photo`` (SSIM of the two photos, ``photo_similarity``),
        ``copy`` (a byte copy, or photos that agree: SSIM >= ``COPY_SSIM``) and ``leakage`` (a copy whose two
        images sit in different parts). A pair close in features only is a near neighbour, never leakage.
        """
        cut = self.duplicate_threshold if threshold is None else float(threshold)
        found = []
        for pair in self.pairs:
            if pair["exact"] or pair["similarity"] >= cut:
                part_a, part_b = self.parts[pair["a"]], self.parts[pair["b"]]
                photo = pair.get("photo")
                copy = bool(pair["exact"] or (photo is not None and photo >= COPY_SSIM))
                found.append(
                    {
                        **pair,
                        "photo": photo,
                        "part_a": part_a,
                        "part_b": part_b,
                        "copy": copy,
                        "leakage": copy and part_a != part_b,
                    }
                )
        return sorted(found, key=lambda p: (not p["exact"], not p["copy"], -p["similarity"]))

    def copies(self, threshold: float | None = None) -> list[dict]:
        """``duplicates`` whose photos agree (byte copies and SSIM >= ``COPY_SSIM``)."""
        return [pair for pair in self.duplicates(threshold) if pair["copy"]]

    def flagged_labels(self) -> list[dict]:
        return [issue for issue in self.label_issues if issue["flagged"]]

    def flagged_outliers(self) -> list[dict]:
        return [outlier for outlier in self.outliers if outlier["flagged"]]

    def counts(self, threshold: float | None = None) -> dict[str, int]:
        """How many images or pairs each check flags."""
        duplicates = self.duplicates(threshold)
        return {
            "label issues": len(self.flagged_labels()),
            "copies": sum(p["copy"] for p in duplicates),
            "exact copies": sum(p["exact"] for p in duplicates),
            "leakage pairs": sum(p["leakage"] for p in duplicates),
            "near neighbours": sum(not p["copy"] for p in duplicates),
            "outliers": len(self.flagged_outliers()),
        }

    @property
    def candidate_floor(self) -> float:
        """The lowest similarity among the stored candidates: a threshold below it would miss pairs."""
        return min((p["similarity"] for p in self.pairs), default=1.0)

    def flagged_rows(self, threshold: float | None = None) -> list[dict]:
        """One row per flagged image (a duplicate pair gives a row for each image), for
        ``core.base.csv_export.csv_text``.
        """
        names = self.class_names
        rows = []
        for issue in self.flagged_labels():
            i = issue["image"]
            rows.append(
                {
                    "path": self.paths[i],
                    "issue": "label",
                    "score": round(issue["score"], 6),
                    "given": names[issue["given"]],
                    "suggested": names[issue["suggested"]],
                    "part": self.parts[i],
                    "partner": "",
                    "partner_part": "",
                }
            )
        for pair in self.duplicates(threshold):
            issue = "leakage" if pair["leakage"] else "copy" if pair["copy"] else "near neighbour"
            for me, other in ((pair["a"], pair["b"]), (pair["b"], pair["a"])):
                rows.append(
                    {
                        "path": self.paths[me],
                        "issue": issue + (" (exact copy)" if pair["exact"] else ""),
                        "score": round(pair["similarity"], 6),
                        "given": names[self.labels[me]],
                        "suggested": "",
                        "part": self.parts[me],
                        "partner": self.paths[other],
                        "partner_part": self.parts[other],
                    }
                )
        for outlier in self.flagged_outliers():
            i = outlier["image"]
            rows.append(
                {
                    "path": self.paths[i],
                    "issue": "outlier",
                    "score": round(outlier["score"], 6),
                    "given": names[self.labels[i]],
                    "suggested": "",
                    "part": self.parts[i],
                    "partner": "",
                    "partner_part": "",
                }
            )
        return rows


CSV_COLUMNS = ("path", "issue", "score", "given", "suggested", "part", "partner", "partner_part")


def analyse(
    dataset: Dataset,
    features: np.ndarray,
    rows: np.ndarray,
    *,
    config: HealthConfig,
    progress: ProgressCallback | None = None,
) -> dict:
    """The three checks on ``features`` of dataset ``rows``; returns the report's analysis fields and timings.

    Parameters
    ----------
    features : ndarray of shape (n, dim)
    rows : ndarray of shape (n,), the dataset row of each feature
    """
    config.validate()
    parts_of_split = dataset.split(config.split)
    part = np.full(len(dataset.image_paths), "", dtype=object)
    for name in SPLIT_PARTS:
        part[parts_of_split[name]] = name
    parts = part[rows]
    labels = dataset.labels[rows]
    timings: dict[str, float] = {}
    if len(rows) < 3:
        raise DatasetError(f"{dataset.name} has {len(rows)} readable images; a health check needs at least three.")

    started = time.perf_counter()
    report(progress, "health", 0, 3, message="Label issues: cross-validated logistic regression")
    fit = np.flatnonzero((parts == "train") | (parts == "val"))
    found = label_issues(
        features[fit],
        labels[fit],
        class_names=dataset.class_names,
        folds=config.folds,
        seed=config.seed,
        regularisation=config.regularisation,
    )
    order = np.argsort(found["score"], kind="stable")
    issues = [
        {
            "image": int(fit[j]),
            "given": int(labels[fit[j]]),
            "suggested": int(found["suggested"][j]),
            "score": float(found["score"][j]),
            # A "given X -> suggested X" row says nothing to fix: flagged only when another class is suggested.
            "flagged": bool(found["flagged"][j]) and int(found["suggested"][j]) != int(labels[fit[j]]),
        }
        for j in order
    ]
    timings["label_issues_s"] = time.perf_counter() - started

    started = time.perf_counter()
    report(progress, "health", 1, 3, message="Near-duplicates: nearest neighbours and content hashes")
    unit = unit_rows(features, dtype=np.float32)  # float32: dot products are then cosine similarities
    a, b, similarity, nearest = neighbour_pairs(unit, k=config.neighbours)
    candidates = {(int(x), int(y)): float(s) for x, y, s in zip(a, b, similarity)}
    timings["neighbours_s"] = time.perf_counter() - started
    started = time.perf_counter()
    digests = [file_digest(dataset.image_paths[row]) for row in rows]
    exact: set[tuple[int, int]] = set()
    for group in byte_duplicate_groups(digests):
        exact.update((x, y) for i, x in enumerate(group) for y in group[i + 1 :])
    for x, y in exact - candidates.keys():  # copies beyond the k nearest (more than k copies of one image)
        candidates[(x, y)] = float(unit[x] @ unit[y])
    # Whether the photos themselves agree, for every candidate (the slider may lower the feature threshold later).
    thumbs = photo_thumbnails([dataset.image_paths[row] for row in rows])
    pairs = [
        {
            "a": x,
            "b": y,
            "similarity": s,
            "exact": (x, y) in exact,
            "photo": 1.0 if (x, y) in exact else _finite_or_none(photo_similarity(thumbs[x], thumbs[y])),
        }
        for (x, y), s in sorted(candidates.items())
    ]
    if config.duplicate_threshold is None:
        threshold = auto_duplicate_threshold(nearest, z=config.duplicate_z)
        source = (
            f"auto: nearest-neighbour distances (1 - cosine) more than {config.duplicate_z:g} robust "
            "standard deviations below their median on a log scale"
        )
    else:
        threshold, source = float(config.duplicate_threshold), "given"
    timings["hashes_s"] = time.perf_counter() - started

    started = time.perf_counter()
    report(progress, "health", 2, 3, message="Outliers: distance to the k-th nearest training image")
    train = parts == "train"
    if train.sum() < 2:
        raise DatasetError(
            f"Split {config.split} of {dataset.name} has {int(train.sum())} training image(s); "
            "outliers need at least two."
        )
    distance = kth_training_distance(unit, train, k=config.outlier_k)
    centre, spread = _robust_centre_spread(np.log(np.clip(distance, _MIN_DISTANCE, None)))
    cutoff = float(np.exp(centre + config.outlier_z * spread))
    outliers = [
        {"image": int(i), "score": float(distance[i]), "flagged": bool(distance[i] > cutoff)}
        for i in np.argsort(-distance, kind="stable")
    ]
    timings["outliers_s"] = time.perf_counter() - started
    report(progress, "health", 3, 3, message="Health check done")
    return {
        "paths": [relative_path(dataset, row) for row in rows],
        "parts": [str(p) for p in parts],
        "labels": [int(x) for x in labels],
        "label_issues": issues,
        "pairs": pairs,
        "duplicate_threshold": threshold,
        "threshold_source": source,
        "outliers": outliers,
        "outlier_cutoff": cutoff,
        "timings": timings,
    }


# ----------------------------------------------------------------------------------------------- cached entry point


def cached_features(
    dataset: Dataset,
    backbone: ResolvedBackbone | str,
    *,
    workspace: Workspace,
    weights: str | None = None,
    variant: str | None = None,
    device: str = "auto",
    precision: str = "auto",
):
    """The FeatureSet ``core.features.extract.extract_features`` would return from its cache, or None when it would
    compute.

    Resolves the weights and precision exactly as ``extract_features`` does, then reads the cache entry only.
    ``backbone``: the resolved record (or a spec, resolved here); ``weights`` as ``extract_features`` takes it.
    """
    from core.backbones.resolved import resolve_backbone
    from core.features.extract import CacheEntry, select_device, select_precision

    backbone = resolve_backbone(backbone, weights=weights)
    variant = backbone.check_variant(variant)
    chosen_precision = select_precision(select_device(device), precision, backbone=backbone.name)
    backbone = backbone.located(workspace=workspace)
    entry = CacheEntry.of(dataset, backbone, workspace=workspace, precision=chosen_precision)
    return entry.read(variant)


def _cache_path(workspace: Workspace, dataset: Dataset, payload: dict):
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
    stem = (
        f"{dataset.key.replace('/', '_').replace(':', '-')}-{payload['backbone'].replace(':', '-').replace('/', '_')}"
    )
    return workspace.root / HEALTH_DIRNAME / f"{stem}-{key}.json"


def dataset_health(
    dataset_key: str,
    backbone: ResolvedBackbone | str,
    *,
    workspace: Workspace,
    weights: str | None = None,
    variant: str | None = None,
    config: HealthConfig = HealthConfig(),
    device: str = "auto",
    precision: str = "auto",
    extract: bool = False,
    compute: bool = True,
    progress: ProgressCallback | None = None,
) -> HealthReport | None:
    """The health report of a dataset from one backbone's features; from ``<workspace>/health`` when computed before.

    Parameters
    ----------
    dataset_key : str
        As ``core.data.datasets.load_dataset`` takes it; the dataset must be prepared.
    backbone, weights, variant, device, precision
        Which cached features (as ``core.features.extract.extract_features`` takes them: the resolved backbone,
        or a spec resolved here once).
    config : HealthConfig
    extract : bool
        Compute the features when they are not cached (minutes) instead of raising ``MissingFileError``.
    compute : bool
        False: only look the report up; None when it was not computed yet (a page render must not compute).

    Raises
    ------
    MissingFileError
        The features are not cached and ``extract`` is False: the message says how to compute them.
    DatasetError
        Too few images for the folds, a class with one image, a split without training images.
    """
    from core.backbones.resolved import resolve_backbone
    from core.features.extract import extract_features

    config.validate()
    resolved = resolve_backbone(backbone, weights=weights).located(workspace=workspace)
    backbone, weights = resolved.name, resolved.weights
    total_started = time.perf_counter()
    whole = load_dataset(dataset_key, workspace, exclusions=False)
    dataset = apply_exclusions(whole, workspace)
    started = time.perf_counter()
    # The whole dataset's features serve every set of exclusions; those of the dataset as analysed (an extraction
    # made after excluding) serve it too.
    for source in [whole] if dataset is whole else [whole, dataset]:
        features = cached_features(
            source, resolved, workspace=workspace, variant=variant, device=device, precision=precision
        )
        if features is not None:
            break
    if features is None:
        source = whole
        if not extract:
            weights_flag = "" if weights == "pretrained" else f" --weights {weights}"
            raise MissingFileError(
                f"No cached {backbone} features for {whole.name} yet. Extract them first: on the Health page press "
                f"'Extract features', or run "
                f"`python -m core extract --dataset {dataset_key} --backbone {backbone}{weights_flag}` "
                f"or add --extract to `python -m core health` (a forward pass over {len(whole.image_paths)} images)."
            )
        features = extract_features(
            whole,
            resolved,
            workspace=workspace,
            variant=variant,
            device=device,
            precision=precision,
            progress=progress,
        )
    features_seconds = time.perf_counter() - started

    payload = {
        "version": HEALTH_FORMAT_VERSION,
        "dataset": dataset.key,
        "fingerprint": dataset.fingerprint,
        "backbone": backbone,
        "weights_tag": features.weights_tag,
        "precision": features.precision,
        "variant": features.variant,
        "features_file": features.cache_path.name if features.cache_path else "",
        "config": asdict(config),
    }
    path = _cache_path(workspace, dataset, payload)
    if path.exists():
        report(progress, "health", 1, 1, message="health report from cache", from_cache=True)
        return HealthReport.from_dict(json.loads(path.read_text(encoding="utf-8")), from_cache=True)
    if not compute:
        return None

    # Feature rows are the source's; the analysis numbers the dataset's rows: map the kept ones across (same order).
    kept = np.flatnonzero(
        ~np.isin([relative_path(source, r) for r in range(len(source.image_paths))], dataset.excluded)
    )
    x, source_rows = features.select(kept)
    rows = np.searchsorted(kept, source_rows)
    analysis = analyse(dataset, np.asarray(x), rows, config=config, progress=progress)
    unreadable = [[relative_path(source, r), "unreadable"] for r in np.setdiff1d(kept, source_rows)]
    analysis["timings"] = {
        "features_s": features_seconds,
        **analysis["timings"],
        "total_s": time.perf_counter() - total_started,
    }
    result = HealthReport(
        dataset_key=dataset.key,
        dataset_name=dataset.name,
        fingerprint=dataset.fingerprint,
        backbone=backbone,
        weights=weights,
        weights_tag=features.weights_tag,
        precision=features.precision,
        variant=features.variant,
        features_file=payload["features_file"],
        config=asdict(config),
        class_names=list(dataset.class_names),
        skipped=[[p, "excluded by the user"] for p in dataset.excluded] + unreadable,
        created_at=time.time(),
        **analysis,
    )
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(result.to_dict()), encoding="utf-8")
    return result


# ----------------------------------------------------------------------------------------------- comparing backbones


def planted_scores(
    report: HealthReport, planted: Mapping[str, Collection], *, threshold: float | None = None, top_outliers: int = 20
) -> dict:
    """How many planted problems a report finds.

    Parameters
    ----------
    planted : mapping
        ``"label"``: relative paths whose label was changed; ``"duplicate"``: pairs (two relative paths) of copies;
        ``"outlier"``: relative paths of foreign images. Any key may be missing.

    Returns
    -------
    dict
        Label issues: recall and precision among the top 2 x (number planted) candidates, and of cleanlab's flagged
        set. Duplicates: recall of the flagged pairs and how many of those are flagged as leakage. Outliers: recall
        in the ``top_outliers`` highest distances.
    """
    scores: dict[str, float | int] = {}
    labels = set(planted.get("label", ()))
    if labels:
        top = [report.paths[i["image"]] for i in report.label_issues[: 2 * len(labels)]]
        flagged = {report.paths[i["image"]] for i in report.flagged_labels()}
        hits = len(labels & set(top))
        scores |= {
            "label_planted": len(labels),
            "label_recall_at_2n": hits / len(labels),
            "label_precision_at_2n": hits / max(1, len(top)),
            "label_flagged": len(flagged),
            "label_flagged_recall": len(labels & flagged) / len(labels),
            "label_flagged_precision": len(labels & flagged) / max(1, len(flagged)),
        }
    duplicates = [frozenset(pair) for pair in planted.get("duplicate", ())]
    if duplicates:
        found = {frozenset((report.paths[p["a"]], report.paths[p["b"]])): p for p in report.duplicates(threshold)}
        hit = [found[pair] for pair in duplicates if pair in found]
        scores |= {
            "duplicate_planted": len(duplicates),
            "duplicate_recall": len(hit) / len(duplicates),
            "duplicate_leakage_flagged": sum(p["leakage"] for p in hit),
            "duplicate_pairs_flagged": len(found),
            "duplicate_precision": len(hit) / max(1, len(found)),
        }
    outliers = set(planted.get("outlier", ()))
    if outliers:
        top = {report.paths[o["image"]] for o in report.outliers[:top_outliers]}
        flagged = {report.paths[o["image"]] for o in report.flagged_outliers()}
        scores |= {
            "outlier_planted": len(outliers),
            f"outlier_recall_top{top_outliers}": len(outliers & top) / len(outliers),
            "outlier_flagged": len(flagged),
            "outlier_flagged_precision": len(outliers & flagged) / max(1, len(flagged)),
        }
    return scores


def compare_health(
    reports: Mapping[str, HealthReport], *, planted: Mapping[str, Collection] | None = None
) -> list[dict]:
    """One row per backbone (keyed by a label of the caller's choosing): what each flags, and what they agree on.

    ``agreed_label_issues`` counts the flagged label issues every report flags; with ``planted``, each row also
    has ``planted_scores``.
    """
    if not reports:
        raise FlowerProbeError("reports must hold at least one health report.")
    fingerprints = {r.fingerprint for r in reports.values()}
    if len(fingerprints) > 1:
        raise FlowerProbeError(
            "The reports are of different data (fingerprints differ); compare reports of the same dataset."
        )
    flagged = [{r.paths[i["image"]] for i in r.flagged_labels()} for r in reports.values()]
    agreed = len(set.intersection(*flagged))
    rows = []
    for label, health in reports.items():
        row = {"backbone": label, **health.counts(), "agreed label issues": agreed}
        if planted:
            row |= planted_scores(health, planted)
        rows.append(row)
    return rows


def report_text(report: HealthReport, *, top: int = 5, threshold: float | None = None) -> str:
    """What ``python -m core health`` prints: the inputs, counts per issue type and the top candidates of each."""
    names = report.class_names
    weights = "" if report.weights == "pretrained" else f" ({report.weights} weights)"
    counts = report.counts(threshold)
    cut = report.duplicate_threshold if threshold is None else threshold
    lines = [
        f"{report.dataset_name}: {len(report.paths)} images, split {report.config['split']}, "
        f"{report.backbone}{weights}, features {report.variant or 'default'}, fingerprint {report.fingerprint}"
        + (" (from cache)" if report.from_cache else ""),
        f"skipped {len(report.skipped)} image(s) (excluded or unreadable); "
        f"computed in {report.timings['total_s']:.1f} s",
        "",
        *(f"{name:<16} {count:>6}" for name, count in counts.items()),
        "",
        f"Label issues (cleanlab, {report.config['folds']}-fold logistic regression on train+val), "
        "lowest label quality first:",
        *(
            f"  {i['score']:.4f}  {report.paths[i['image']]}  "
            f"given {names[i['given']]!r}, suggested {names[i['suggested']]!r}"
            + ("" if i["flagged"] else "  (not flagged)")
            for i in report.label_issues[:top]
        ),
        f"Copies (byte copies, or photos whose SSIM >= {COPY_SSIM:g} among pairs at feature cosine >= {cut:.4f}, "
        f"{report.threshold_source}):",
        *(
            f"  SSIM {p['photo']:.3f} cosine {p['similarity']:.4f}  {report.paths[p['a']]} ({p['part_a']})  <->  "
            f"{report.paths[p['b']]} ({p['part_b']})"
            + ("  exact copy" if p["exact"] else "")
            + ("  LEAKAGE" if p["leakage"] else "")
            for p in report.copies(threshold)[:top]
        ),
        "Near neighbours (close in features, but the photos differ: not copies):",
        *(
            f"  cosine {p['similarity']:.4f} SSIM "
            f"{'-' if p['photo'] is None else format(p['photo'], '.3f')}  {report.paths[p['a']]} ({p['part_a']})  "
            f"<->  {report.paths[p['b']]} ({p['part_b']})"
            for p in [q for q in report.duplicates(threshold) if not q["copy"]][:top]
        ),
        f"Outliers (cosine distance to the {report.config['outlier_k']}-th nearest training image; flagged above "
        f"{report.outlier_cutoff:.4f}), farthest first:",
        *(
            f"  {o['score']:.4f}  {report.paths[o['image']]} ({report.parts[o['image']]})"
            + ("" if o["flagged"] else "  (not flagged)")
            for o in report.outliers[:top]
        ),
    ]
    return "\n".join(lines)
