"""One agreement report of two feature sets of a dataset: the feature measures, and the error consistency of the
newest runs trained on them when the registry has such runs (what ``python -m core agree`` prints).

The runs: for each side, completed runs on the whole training part of the dataset with that backbone, weights and
feature variant, the reference protocol (the MLP head) preferred, then the newest; both on one split (``split``, or
the newest split both have). Their right/wrong per test image are matched by the photo's path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.agreement.measures import (
    DEFAULT_K,
    ErrorConsistency,
    FeatureAgreement,
    cka_sentence,
    error_consistency,
    feature_agreement,
    kappa_sentence,
    neighbour_sentence,
)
from core.agreement.pairs import FeaturePair, FeatureSource, load_feature_pair, paired_correct
from core.base.progress import ProgressCallback
from core.base.workspace import Workspace
from core.runs.naming import run_name
from core.runs.registry import RunRegistry


@dataclass(frozen=True)
class AgreementReport:
    """The measures of one pair, and the runs (if any) whose mistakes were compared."""

    pair: FeaturePair = field(repr=False)
    features: FeatureAgreement
    errors: ErrorConsistency | None
    run_a: dict | None = field(default=None, repr=False)
    run_b: dict | None = field(default=None, repr=False)
    correct_a: np.ndarray | None = field(default=None, repr=False)  # (n_test,) bool, matched to correct_b
    correct_b: np.ndarray | None = field(default=None, repr=False)

    def sentences(self) -> list[str]:
        """One plain-text sentence per measure (the runs named in the kappa one), then what was left out."""
        lines = [neighbour_sentence(self.features), cka_sentence(self.features)]
        if self.errors is not None:
            sentence = kappa_sentence(self.errors)
            lines.append(f"Runs {run_name(self.run_a)} and {run_name(self.run_b)}: {sentence[0].lower()}{sentence[1:]}")
        if self.pair.note:
            lines.append(self.pair.note)
        return lines

    def to_dict(self) -> dict:
        """JSON-ready: the two feature sets, the measures, the runs compared, the sentences."""
        return {
            "dataset": self.pair.dataset_name,
            "images": self.pair.n_images,
            "only_a": self.pair.only_a,
            "only_b": self.pair.only_b,
            "a": self.pair.source_a.to_dict(),
            "b": self.pair.source_b.to_dict(),
            "features": self.features.to_dict(),
            "error_consistency": None
            if self.errors is None
            else {**self.errors.to_dict(), "run_a": self.run_a["id"], "run_b": self.run_b["id"]},
            "sentences": self.sentences(),
        }


def _matching_runs(runs: list[dict], source: FeatureSource) -> list[dict]:
    chosen = [
        run
        for run in runs
        if run["backbone"] == source.backbone and run["weights"] == source.weights and run["features"] == source.variant
    ]
    # Reference protocol first, then newest (``runs`` is newest first and sorted() is stable).
    return sorted(chosen, key=lambda run: run.get("protocol") not in (None, "mlp"))


def runs_for(
    registry: RunRegistry, dataset_key: str, source_a: FeatureSource, source_b: FeatureSource, *, split: str | None
) -> tuple[dict, dict] | None:
    """The two runs whose mistakes to compare (module docstring), or None when one side has none."""
    runs = registry.list_runs(status="completed", dataset_key=dataset_key, few_shot=False, limit=100_000)
    side_a, side_b = _matching_runs(runs, source_a), _matching_runs(runs, source_b)
    splits = [run["split"] for run in side_a if split is None or run["split"] == split]
    for candidate in splits:
        first_b = next((run for run in side_b if run["split"] == candidate), None)
        if first_b is not None:
            return next(run for run in side_a if run["split"] == candidate), first_b
    return None


def run_correct(registry: RunRegistry, run: dict) -> tuple[list[str], np.ndarray]:
    """Each test prediction's stored photo path and whether it was right, shape (n_test,)."""
    predictions = registry.predictions(run["id"])
    return [p["path"] for p in predictions], np.asarray([p["label"] == p["predicted"] for p in predictions], bool)


def agreement_report(
    dataset_key: str,
    backbone_a: str,
    backbone_b: str,
    *,
    workspace: Workspace,
    k: int = DEFAULT_K,
    variant_a: str | None = None,
    variant_b: str | None = None,
    split: str | None = None,
    extract: bool = True,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    before_extract: Callable[[str], None] | None = None,
) -> AgreementReport:
    """Feature agreement of two backbone specs on a dataset, and the error consistency of runs on them if any.

    Parameters
    ----------
    dataset_key, backbone_a, backbone_b, variant_a, variant_b, extract, progress, before_extract
        As ``core.agreement.pairs.load_feature_pair`` takes them.
    k : int
        Neighbours per image.
    split : str, optional
        The split of the runs compared; None: the newest both sides have.
    """
    pair = load_feature_pair(
        dataset_key,
        backbone_a,
        backbone_b,
        workspace=workspace,
        variant_a=variant_a,
        variant_b=variant_b,
        extract=extract,
        progress=progress,
        before_extract=before_extract,
    )
    features = feature_agreement(pair.features_a, pair.features_b, k=k, seed=seed)
    registry = RunRegistry(workspace.registry_path)
    runs = runs_for(registry, dataset_key, pair.source_a, pair.source_b, split=split)
    if runs is None:
        return AgreementReport(pair=pair, features=features, errors=None)
    run_a, run_b = runs
    (keys_a, right_a), (keys_b, right_b) = run_correct(registry, run_a), run_correct(registry, run_b)
    correct_a, correct_b, _, _ = paired_correct(keys_a, right_a, keys_b, right_b)
    return AgreementReport(
        pair=pair,
        features=features,
        errors=error_consistency(correct_a, correct_b, seed=seed),
        run_a=run_a,
        run_b=run_b,
        correct_a=correct_a,
        correct_b=correct_b,
    )
