"""Sanity checks of a run: does it predict (nearly) one class, are its features collapsed; and the default-run rule.

The offline demo's first headline was an artefact: random-weight EfficientNet-Lite0 features have a mean norm of
about 2e-7, so the reference MLP (raw features, AdamW 1e-3, 5 epochs) predicted one class for all 340 test photos
(5.9 %, chance), while logistic regression on the same features reached 75 %. Nothing said so. ``run_warnings`` says
it for every run, wherever the run appears, with the cause and the fix:

- **one class**: the run's most predicted class takes at least ``ONE_CLASS_SHARE`` of its test predictions, read
  from the confusion matrix every completed run records (columns are predicted classes);
- **collapsed features**: the run's cached training features have a mean L2 norm under ``TINY_NORM``, or nearly no
  spread around their mean (total variance under ``TINY_SPREAD`` of the mean squared norm), computed from the
  run's feature cache (``feature_stats``; memoised per cache file and variant). Said of runs whose head reads the
  features raw (``RAW_PROTOCOLS`` without standardising): for them it is the cause of a failure.

``default_runs`` is the one rule the pages use to pick runs when the user has not: the best run on validation for
each backbone and weights (``DEFAULT_RULE`` says so on the page).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.base.errors import FlowerProbeError
from core.base.workspace import Workspace
from core.features.extract import read_features
from core.runs.files import RunFiles
from core.runs.naming import weights_name

ONE_CLASS_SHARE = 0.9  # "nearly all one class": nine test predictions in ten or more go to one class
TINY_NORM = 1e-3  # pretrained backbones' pooled features have norms of order 1-100; random Lite0's are ~2e-7
TINY_SPREAD = 1e-4  # total variance / mean squared norm: every image maps to (nearly) the same vector

RAW_PROTOCOLS = ("mlp", "linear")  # heads that read the features as they are (unless told to standardise)
FIX = (
    "Fix: standardise the features (the Train page's 'standardise features') or use logistic regression, which "
    "standardises them; k-NN and NCM compare directions and are not fooled either."
)
DEFAULT_RULE = (
    "the best run on validation for each backbone and weights (trained on the whole training part; runs that predict "
    "one class come last)"
)
DEFAULT_RULE_PER_SPLIT = DEFAULT_RULE.replace("backbone and weights", "backbone, weights and split")


@dataclass(frozen=True)
class RunWarning:
    """One thing wrong with a run: ``kind`` ('one_class' or 'collapsed'), ``text`` cause and fix, plain text."""

    kind: str
    text: str


def predicted_share(confusion: np.ndarray | list) -> tuple[int, float]:
    """The most predicted class and its share of the test predictions.

    Parameters
    ----------
    confusion : array of shape (n_classes, n_classes)
        Rows true classes, columns predicted classes (as runs record it).

    Returns
    -------
    (int, float)
        The class index, and the share in [0, 1] (0.0 for an empty matrix).
    """
    matrix = np.asarray(confusion, dtype=np.float64)
    if matrix.ndim != 2 or matrix.sum() == 0:
        return 0, 0.0
    predicted = matrix.sum(axis=0)
    top = int(predicted.argmax())
    return top, float(predicted[top] / predicted.sum())


def feature_stats(features: np.ndarray) -> dict:
    """Mean L2 norm of ``features`` (array of shape (n, dim)) and their total variance relative to the mean squared
    norm (0: every row the same vector, 1: rows spread around a zero mean)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise FlowerProbeError(f"features must be a non-empty 2-d array, got shape {x.shape}.")
    squared = (x**2).sum(axis=1)
    mean_squared = float(squared.mean())
    total_variance = float(x.var(axis=0).sum())
    return {
        "mean_norm": float(np.sqrt(squared).mean()),
        "relative_spread": total_variance / mean_squared if mean_squared > 0 else 0.0,
    }


@lru_cache(maxsize=256)
def _cached_stats(path: str, variant: str | None, stamp: float) -> dict | None:
    del stamp  # part of the key only: a rewritten cache is read again
    try:
        return feature_stats(read_features(path, variant=variant).features)
    except (FlowerProbeError, OSError, ValueError):
        return None  # no cache (deleted, never written): nothing to say about the features


def run_feature_stats(run: dict, workspace: Workspace) -> dict | None:
    """``feature_stats`` of the run's cached features (recorded ``metrics['feature_stats']`` first), None without."""
    recorded = (run.get("metrics") or {}).get("feature_stats")
    if recorded:
        return recorded
    path = RunFiles(run, workspace).features
    return None if path is None else cache_feature_stats(path, variant=run.get("features"))


def collapsed_text(stats: dict | None, *, who: str) -> str | None:
    """The warning for collapsed features (``feature_stats``'s ``stats`` of ``who``'s features), None when they are
    not collapsed or unknown."""
    if stats is None or (stats["mean_norm"] >= TINY_NORM and stats["relative_spread"] >= TINY_SPREAD):
        return None
    what = (
        f"nearly zero (mean norm {stats['mean_norm']:.1g})"
        if stats["mean_norm"] < TINY_NORM
        else f"nearly the same vector for every photo (relative spread {stats['relative_spread']:.1g})"
    )
    return f"The features of {who} are collapsed: {what}. {FIX}"


def cache_feature_stats(path: str | Path, *, variant: str | None = None) -> dict | None:
    """``feature_stats`` of a feature cache (memoised per file and variant), None when it cannot be read."""
    path = Path(path)
    if not path.exists():
        return None
    return _cached_stats(str(path), variant, path.stat().st_mtime)


def run_warnings(run: dict, workspace: Workspace | None = None) -> list[RunWarning]:
    """What is wrong with a completed run, cause and fix: it predicts (nearly) one class; its features collapsed.

    ``workspace`` None skips the feature check (it reads the run's feature cache).
    """
    warnings: list[RunWarning] = []
    who = f"{run['backbone']} ({weights_name(run['weights'])})"
    # Collapsed features only mislead a head that reads them raw (the reference MLP, the linear probe without
    # standardising); logistic regression standardises and k-NN / NCM compare directions, so their accuracy stands.
    head = (run.get("config") or {}).get("head") or {}
    raw = (run.get("protocol") or "mlp") in RAW_PROTOCOLS and not head.get("standardise")
    stats = run_feature_stats(run, workspace) if workspace is not None and raw else None
    collapsed = collapsed_text(stats, who=who)
    if collapsed:
        warnings.append(RunWarning("collapsed", collapsed))
    if run.get("confusion") is not None and len(run.get("class_names") or []) > 1:
        top, share = predicted_share(run["confusion"])
        if share >= ONE_CLASS_SHARE:
            cause = "its features are collapsed" if collapsed else "the head did not learn to separate the classes"
            warnings.append(
                RunWarning(
                    "one_class",
                    f"Run #{run['id']} predicts one class ({run['class_names'][top]!s}) for {share:.0%} of the test "
                    f"photos, so its accuracy is chance, not a measure of the features: {cause}. {FIX}",
                )
            )
    return warnings


def is_degenerate(run: dict) -> bool:
    """The run predicts (nearly) one class (from its confusion matrix alone; no file read)."""
    return run.get("confusion") is not None and predicted_share(run["confusion"])[1] >= ONE_CLASS_SHARE


def preference(run: dict) -> tuple:
    """How default runs are ranked (higher is preferred): not predicting one class, then validation accuracy, then
    the newer. Validation, not test: a default chosen by test accuracy would report a figure used to choose it."""
    valid = (run.get("metrics") or {}).get("valid_acc")
    return (not is_degenerate(run), valid if valid is not None else -1.0, run["id"])


def default_runs(runs: list[dict], *, per_split: bool = False) -> list[dict]:
    """``DEFAULT_RULE``: per (backbone, weights), the completed run on the whole training part with the best
    validation accuracy (ties: the newer); runs predicting one class only when nothing else is there. Ordered by id.

    ``per_split``: one per (backbone, weights, split) instead (Oxford 17's three splits side by side).
    """
    best: dict[tuple, tuple] = {}
    for run in runs:
        if run.get("status", "completed") != "completed" or run.get("shots") is not None or run["test_acc"] is None:
            continue
        key = preference(run)
        group = (run["backbone"], run["weights"], run["split"] if per_split else None)
        if group not in best or key > best[group][0]:
            best[group] = (key, run)
    return sorted((run for _, run in best.values()), key=lambda run: run["id"])
