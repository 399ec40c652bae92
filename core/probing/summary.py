"""One way to summarise runs: group what is the same experiment, then mean and std of its test metrics.

Runs are the same experiment when they share backbone, weights, feature variant, protocol, head (type and
standardisation) and shots; they then differ only in the split or the seed (Oxford 17's three splits,
few-shot draws), and the summary gives the mean and sample std (ddof=1) over them. The CLI's comparison
table, the probe tables and the Compare page all group through ``summarise_runs``, so they never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def experiment_key(run: dict) -> tuple:
    """What makes two runs the same experiment: (backbone, weights, features, protocol, head, standardised, shots)."""
    head = run["config"].get("head") or {}
    # .get: runs recorded before these fields existed were MLP heads on the default variant, not standardised.
    return (
        run["backbone"],
        run["weights"],
        run.get("features"),
        run.get("protocol") or "mlp",
        head.get("architecture", head.get("head")),  # "head": runs recorded before the rename
        bool(head.get("standardise")),
        run.get("shots"),
    )


@dataclass(frozen=True)
class RunSummary:
    """The runs of one experiment, in the order given, and their test metrics (percent; std None for one run)."""

    key: tuple
    runs: tuple[dict, ...]
    acc_mean: float
    acc_std: float | None
    loss_mean: float | None  # None where a protocol has no loss (knn, ncm)
    loss_std: float | None

    @property
    def first(self) -> dict:
        return self.runs[0]

    @property
    def splits(self) -> list[str]:
        return [run["split"] for run in self.runs]

    @property
    def seeds(self) -> list[int]:
        return [run["seed"] for run in self.runs]


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    if any(v is None for v in values):
        return None, None
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None


def summarise_runs(runs: list[dict]) -> list[RunSummary]:
    """Group ``runs`` by ``experiment_key`` (first appearance order) with mean and std of test accuracy and loss."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(experiment_key(run), []).append(run)
    summaries = []
    for key, members in groups.items():
        acc_mean, acc_std = _mean_std([r["test_acc"] for r in members])
        loss_mean, loss_std = _mean_std([r["test_loss"] for r in members])
        summaries.append(
            RunSummary(
                key=key, runs=tuple(members), acc_mean=acc_mean, acc_std=acc_std, loss_mean=loss_mean, loss_std=loss_std
            )
        )
    return summaries
