"""Two cached feature sets of one dataset, matched image by image, for the agreement measures.

Feature caches hold features by dataset row, and a dataset's rows move when images are excluded or added, so two
sets are matched by image: by dataset row when both were made on the same version of the dataset (the same
fingerprint), else by each image's path inside the dataset folder. Images only one set holds (excluded in between,
or unreadable for one extraction) drop out, and ``FeaturePair.note`` says how many were left out and how many remain.

- ``align_by_image``: the matching itself, on any per-row image keys (rows or relative paths).
- ``load_feature_pair``: two backbones' (or two weights', or two variants') features of a dataset as it is now,
  from the cache, extracted first when asked (the CLI's ``agree``).
- ``run_feature_pair``: the features two recorded runs were trained on (the Compare page).
- ``paired_correct``: two runs' right/wrong on the test images they share, for ``measures.error_consistency``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.base.errors import FlowerProbeError, MissingFileError
from core.base.progress import ProgressCallback
from core.base.workspace import Workspace
from core.data.datasets import Dataset, load_dataset
from core.data.exclusions import relative_path, without_rows
from core.runs.naming import weights_name


@dataclass(frozen=True)
class FeatureSource:
    """Which features one side of a pair is: backbone, weights, feature variant, and how they were computed."""

    backbone: str
    weights: str  # "pretrained", "random" or a checkpoint path
    variant: str
    weights_tag: str  # the resolved weights (a checkpoint's digest tells two files apart)
    precision: str

    def describe(self) -> str:
        """``efficientnet_lite0 · random weights · gap features`` (plain text)."""
        return f"{self.backbone} · {weights_name(self.weights)} · {self.variant} features"

    def to_dict(self) -> dict:
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            "variant": self.variant,
            "weights_tag": self.weights_tag,
            "precision": self.precision,
        }


@dataclass(frozen=True)
class FeaturePair:
    """The features of the images both sets hold, row i of each the same image.

    features_a : ndarray of shape (n_images, dim_a)
    features_b : ndarray of shape (n_images, dim_b)
    rows_a, rows_b : ndarray of shape (n_images,), int64
        Each image's row in the dataset its set was made on (the same numbers when both were made on one version).
    """

    features_a: np.ndarray
    features_b: np.ndarray
    rows_a: np.ndarray
    rows_b: np.ndarray
    source_a: FeatureSource
    source_b: FeatureSource
    dataset_name: str
    only_a: int  # images only set A holds features of
    only_b: int

    @property
    def n_images(self) -> int:
        return len(self.rows_a)

    @property
    def note(self) -> str:
        """Empty when both sets hold the same images; else what was left out (plain text)."""
        if not (self.only_a or self.only_b):
            return ""
        return (
            f"The two feature sets hold different images ({self.only_a:,} only in {self.source_a.describe()}, "
            f"{self.only_b:,} only in {self.source_b.describe()}: images excluded or added in between, or unreadable "
            f"for one of them); the measures use the {self.n_images:,} images both hold."
        )


def align_by_image(keys_a: Sequence | np.ndarray, keys_b: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the images both lists hold, in the order of ``keys_a``.

    Parameters
    ----------
    keys_a : sequence of shape (n_a,)
    keys_b : sequence of shape (n_b,)
        One key per feature row naming its image (a dataset row, or a path inside the dataset folder); unique.

    Returns
    -------
    index_a, index_b : ndarray of shape (n_common,), int64
        ``keys_a[index_a] == keys_b[index_b]``.

    Raises
    ------
    FlowerProbeError
        A list repeats a key, or the two share no image.
    """
    position_b: dict = {}
    for position, key in enumerate(keys_b):
        if position_b.setdefault(key, position) != position:
            raise FlowerProbeError(f"keys_b must name each image once, got {key!r} twice.")
    seen: set = set()
    index_a, index_b = [], []
    for position, key in enumerate(keys_a):
        if key in seen:
            raise FlowerProbeError(f"keys_a must name each image once, got {key!r} twice.")
        seen.add(key)
        if key in position_b:
            index_a.append(position)
            index_b.append(position_b[key])
    if not index_a:
        raise FlowerProbeError(
            f"The two feature sets share no image ({len(keys_a):,} and {len(keys_b):,} images): they are of different "
            "datasets, and agreement needs the same images in both."
        )
    return np.asarray(index_a, dtype=np.int64), np.asarray(index_b, dtype=np.int64)


def check_distinct(source_a: FeatureSource, source_b: FeatureSource) -> None:
    """Raise when both sides are the same features: one backbone twice with the same weights and variant."""
    if (source_a.backbone, source_a.weights_tag, source_a.variant) == (
        source_b.backbone,
        source_b.weights_tag,
        source_b.variant,
    ):
        raise FlowerProbeError(
            f"backbones must name two different feature sets, got {source_a.describe()} twice (the same weights): "
            "compare it with another backbone, other weights (NAME@random, NAME@<checkpoint>) or another feature "
            "variant."
        )


def _pair(features_a, features_b, keys_a, keys_b, source_a, source_b, dataset_name) -> FeaturePair:
    index_a, index_b = align_by_image(list(keys_a), list(keys_b))
    return FeaturePair(
        features_a=np.asarray(features_a.features[index_a]),
        features_b=np.asarray(features_b.features[index_b]),
        rows_a=np.asarray(features_a.rows[index_a], dtype=np.int64),
        rows_b=np.asarray(features_b.rows[index_b], dtype=np.int64),
        source_a=source_a,
        source_b=source_b,
        dataset_name=dataset_name,
        only_a=len(features_a.rows) - len(index_a),
        only_b=len(features_b.rows) - len(index_b),
    )


def _image_keys(feature_set, dataset: Dataset) -> list[str]:
    return [relative_path(dataset, int(row)) for row in feature_set.rows]


# ----------------------------------------------------------------------------------------------- from the cache


def _cached(dataset: Dataset, backbone, *, workspace: Workspace, precision: str, variant: str):
    from core.features.extract import CacheEntry

    return CacheEntry.of(dataset, backbone, workspace=workspace, precision=precision).read(variant)


def load_feature_pair(
    dataset_key: str,
    backbone_a: str,
    backbone_b: str,
    *,
    workspace: Workspace,
    weights_a: str | None = None,
    weights_b: str | None = None,
    variant_a: str | None = None,
    variant_b: str | None = None,
    extract: bool = False,
    device: str = "auto",
    precision: str = "auto",
    progress: ProgressCallback | None = None,
    before_extract: Callable[[str], None] | None = None,
) -> FeaturePair:
    """Two feature sets of a prepared dataset as it is now (its exclusions applied), matched image by image.

    Each set is read from the cache ``core.features.extract`` writes: that of the dataset as it is, or that of the
    whole dataset before exclusions (its rows are then matched by path). A set not cached is extracted when
    ``extract`` is True; ``before_extract`` is called with the backbone's name first (a forward pass over every
    image is worth saying before it starts).

    Parameters
    ----------
    dataset_key : str
        As ``core.data.datasets.load_dataset`` takes it.
    backbone_a, backbone_b : str
        Backbone specs, ``NAME``, ``NAME@random`` or ``NAME@<checkpoint>`` (``core.backbones.resolved``).
    weights_a, weights_b, variant_a, variant_b : str, optional
        As ``core.features.extract.extract_features`` takes them (None: the spec's weights, the backbone's variant).
    extract : bool
        Compute missing features instead of raising ``MissingFileError``.

    Raises
    ------
    FlowerProbeError
        Both sides are the same features (parameter ``backbones``); a variant the backbone does not have.
    MissingFileError
        Features not cached and ``extract`` is False.
    """
    from core.backbones.resolved import resolve_backbone
    from core.features.extract import extract_features, select_device, select_precision

    dataset = load_dataset(dataset_key, workspace)
    whole = load_dataset(dataset_key, workspace, exclusions=False) if dataset.excluded else dataset
    current = set(_image_keys_all(dataset))
    sides, resolved = [], []
    for spec, weights, variant in ((backbone_a, weights_a, variant_a), (backbone_b, weights_b, variant_b)):
        backbone = resolve_backbone(spec, weights=weights)
        variant = backbone.check_variant(variant)
        chosen_precision = select_precision(select_device(device), precision, backbone=backbone.name)
        backbone = backbone.located(workspace=workspace, progress=progress)
        resolved.append(backbone)
        sides.append(FeatureSource(backbone.name, backbone.weights, variant, backbone.weights_tag, chosen_precision))
    check_distinct(*sides)
    loaded = []
    for source, backbone in zip(sides, resolved):
        feature_set, made_on = None, dataset
        for candidate in [dataset] if whole is dataset else [dataset, whole]:
            feature_set = _cached(
                candidate, backbone, workspace=workspace, precision=source.precision, variant=source.variant
            )
            if feature_set is not None:
                made_on = candidate
                break
        if feature_set is None:
            if not extract:
                raise MissingFileError(
                    f"No cached {source.describe()} for {dataset.name} yet: extract them with `python -m core extract "
                    f"--dataset {dataset_key} --backbone {source.backbone} --weights {source.weights}` "
                    f"(a forward pass over {len(dataset.image_paths):,} images)."
                )
            if before_extract:
                before_extract(backbone.name)
            feature_set = extract_features(
                dataset,
                backbone,
                workspace=workspace,
                variant=source.variant,
                device=device,
                precision=precision,
                progress=progress,
            )
        keys = _image_keys(feature_set, made_on)
        keep = np.asarray([key in current for key in keys], dtype=bool)  # a whole-dataset cache: only what is in now
        loaded.append((_Subset(feature_set.features, feature_set.rows, keep), [k for k, c in zip(keys, keep) if c]))
    (set_a, keys_a), (set_b, keys_b) = loaded
    return _pair(set_a, set_b, keys_a, keys_b, sides[0], sides[1], dataset.name)


def _image_keys_all(dataset: Dataset) -> list[str]:
    return [relative_path(dataset, row) for row in range(len(dataset.image_paths))]


class _Subset:
    """The rows of a FeatureSet that ``keep`` marks (features and dataset rows)."""

    def __init__(self, features: np.ndarray, rows: np.ndarray, keep: np.ndarray) -> None:
        self.features = features if keep.all() else features[keep]
        self.rows = rows if keep.all() else rows[keep]


# ----------------------------------------------------------------------------------------------- from runs


def _run_features(run: dict, workspace: Workspace, name: str):
    from core.backbones.variants import TOKENS
    from core.features.extract import read_features
    from core.runs.files import RunFiles

    path = RunFiles(run, workspace).features
    if path is None:
        raise MissingFileError(f"{name}: run #{run['id']} recorded no features (it did not complete).")
    try:
        # An attentive run's entry holds patch tokens; its features here are the pooled ones kept beside them.
        variant = None if run.get("features") == TOKENS else run.get("features")
        return read_features(path, variant=variant)
    except MissingFileError as exc:
        raise MissingFileError(f"{name}: run #{run['id']}'s {exc}") from exc


def run_dataset(run: dict, workspace: Workspace, *, name: str = "run") -> Dataset:
    """The dataset as run ``run`` saw it: today's files without the images it had excluded.

    Raises
    ------
    FlowerProbeError
        The dataset's files changed since the run (another fingerprint): its feature rows cannot be matched to images.
    """
    whole = load_dataset(run["dataset_key"], workspace, exclusions=False)
    excluded = set((run.get("config") or {}).get("excluded_images") or ())
    dataset = whole
    if excluded:
        drop = np.asarray([relative_path(whole, row) in excluded for row in range(len(whole.image_paths))], dtype=bool)
        dataset = without_rows(whole, drop)
    if dataset.fingerprint != run["dataset_fingerprint"]:
        raise FlowerProbeError(
            f"{name}: run #{run['id']} was made on another version of {run['dataset_name']} (its images changed "
            "since), so its features cannot be matched image by image; train it again."
        )
    return dataset


def run_source(run: dict, feature_set) -> FeatureSource:
    return FeatureSource(
        backbone=run["backbone"],
        weights=run["weights"],
        variant=feature_set.variant or str(run.get("features")),
        weights_tag=feature_set.weights_tag,
        precision=feature_set.precision,
    )


def run_feature_pair(run_a: dict, run_b: dict, *, workspace: Workspace) -> FeaturePair:
    """The cached features runs ``run_a`` and ``run_b`` (``RunRegistry`` rows) were trained on, matched by image.

    Runs on the same version of a dataset pair rows directly; runs with other exclusions are matched by path.

    Raises
    ------
    FlowerProbeError
        Runs of different datasets; the same features twice (parameter ``run_b``: e.g. two protocols on one
        backbone's features); a dataset changed since a run.
    MissingFileError
        A run's feature cache was deleted.
    """
    if run_a["dataset_key"] != run_b["dataset_key"]:
        raise FlowerProbeError(
            f"run_b must be on the same dataset as run_a, got {run_b['dataset_name']} and {run_a['dataset_name']}: "
            "agreement needs the same images in both."
        )
    same = all(run_a.get(key) == run_b.get(key) for key in ("backbone", "weights", "weights_tag", "features"))
    if same:  # told before any feature is read
        raise FlowerProbeError(
            f"run_b must use other features than run_a to compare feature spaces; both use {run_a['backbone']} · "
            f"{weights_name(run_a['weights'])} · {run_a.get('features')} features (the same weights), so every "
            "feature measure would be 1."
        )
    set_a, set_b = _run_features(run_a, workspace, "run_a"), _run_features(run_b, workspace, "run_b")
    source_a, source_b = run_source(run_a, set_a), run_source(run_b, set_b)
    if run_a["dataset_fingerprint"] == run_b["dataset_fingerprint"]:
        keys_a, keys_b = set_a.rows.tolist(), set_b.rows.tolist()
    else:
        keys_a = _image_keys(set_a, run_dataset(run_a, workspace, name="run_a"))
        keys_b = _image_keys(set_b, run_dataset(run_b, workspace, name="run_b"))
    return _pair(set_a, set_b, keys_a, keys_b, source_a, source_b, run_a["dataset_name"])


def paired_correct(
    keys_a: Sequence, correct_a: np.ndarray, keys_b: Sequence, correct_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Two runs' right/wrong on the test images both scored, matched by image key (e.g. the photo's path).

    Parameters
    ----------
    keys_a, correct_a : shape (n_a,)
    keys_b, correct_b : shape (n_b,)

    Returns
    -------
    correct_a, correct_b : ndarray of shape (n_common,), bool
    only_a, only_b : int
        Test images only one run scored (another split or other exclusions).
    """
    if len(keys_a) != len(correct_a) or len(keys_b) != len(correct_b):
        raise FlowerProbeError(
            f"keys and correct must have one entry per test image, got {len(keys_a)} keys and {len(correct_a)} "
            f"results for run A, {len(keys_b)} and {len(correct_b)} for run B."
        )
    index_a, index_b = align_by_image(list(keys_a), list(keys_b))
    a, b = np.asarray(correct_a, dtype=bool)[index_a], np.asarray(correct_b, dtype=bool)[index_b]
    return a, b, len(keys_a) - len(index_a), len(keys_b) - len(index_b)
