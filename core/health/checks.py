"""Data health from a backbone's cached features: likely label errors, near-duplicates and leakage, outliers.

Three checks, all on the features ``core.features.extract`` cached (no forward pass here), one module each beside
the helpers they share (``core.health.common``); ``analyse`` here runs them together:

- **label issues** (``core.health.labels``): out-of-sample class probabilities from K-fold cross-validated logistic
  regression on the training and validation images (the test part stays untouched), handed to cleanlab's confident
  learning (``cleanlab.filter.find_label_issues``, ``cleanlab.rank.get_label_quality_scores``);
- **copies, near neighbours and leakage** (``core.health.copies``): image pairs whose features have a cosine
  similarity above a threshold, plus exact byte copies (same SHA-256). A pair is a *copy* only when the photos agree
  (a byte copy, or SSIM of grey thumbnails >= ``COPY_SSIM``, scikit-image); otherwise it is a *near neighbour*
  (close in features only). A copy whose two images sit in different parts of the split (train/val/test) is
  leakage. The default threshold comes from the dataset's own distribution of nearest-neighbour similarities
  (``auto_duplicate_threshold``), since a random-weight backbone puts every pair near cosine 1 and a pretrained one
  spreads them out;
- **outliers** (``core.health.outliers``): the cosine distance of each image to its k-th nearest training image,
  ranked.

``dataset_health`` runs them for one (dataset, backbone, weights, variant) and caches the ``HealthReport``
(``core.health.report``) as one JSON file per input in ``<workspace>/health/`` (written atomically, keyed on the
dataset fingerprint, the features and every parameter), so a rerun is a file read. Images the user excluded
(``core.data.exclusions``) are skipped and listed; the features stay those of the whole dataset, so excluding
an image never forces a new extraction.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from core.base.errors import DatasetError, FlowerProbeError, MissingFileError
from core.base.fileio import atomic_write, file_digest
from core.base.progress import ProgressCallback, report
from core.base.vectors import unit_rows
from core.base.workspace import Workspace
from core.data.datasets import DEFAULT_SPLIT, SPLIT_PARTS, Dataset, load_dataset
from core.data.exclusions import apply_exclusions, relative_path
from core.health.copies import (
    COPY_SSIM,
    PHOTO_SIDE,
    auto_duplicate_threshold,
    byte_duplicate_groups,
    finite_or_none,
    neighbour_pairs,
    photo_similarity,
    photo_thumbnails,
)
from core.health.labels import label_issues, out_of_sample_probabilities
from core.health.outliers import kth_training_distance, outlier_cutoff
from core.health.report import CSV_COLUMNS, HealthReport, report_text

if TYPE_CHECKING:
    from core.backbones.resolved import ResolvedBackbone

# What callers import from here (the checks' modules are this module's parts): the CLI, ui/ and the tests.
__all__ = [
    "COPY_SSIM",
    "CSV_COLUMNS",
    "HEALTH_DIRNAME",
    "HEALTH_FORMAT_VERSION",
    "ISSUE_TYPES",
    "PHOTO_SIDE",
    "HealthConfig",
    "HealthReport",
    "analyse",
    "auto_duplicate_threshold",
    "byte_duplicate_groups",
    "cached_features",
    "compare_health",
    "dataset_health",
    "kth_training_distance",
    "label_issues",
    "neighbour_pairs",
    "out_of_sample_probabilities",
    "photo_similarity",
    "photo_thumbnails",
    "planted_scores",
    "report_text",
    "unit_rows",
]

# Bump when an analysis changes: older cached reports then miss.
HEALTH_FORMAT_VERSION = 2  # 2: pairs carry the photos' SSIM (copies vs near neighbours)
ISSUE_TYPES = ("label", "duplicate", "outlier")
HEALTH_DIRNAME = "health"


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
            "photo": 1.0 if (x, y) in exact else finite_or_none(photo_similarity(thumbs[x], thumbs[y])),
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
    cutoff = outlier_cutoff(distance, z=config.outlier_z)
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
