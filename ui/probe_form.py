"""The Train page's evaluation inputs: protocols (the reference MLP preselected), feature variants, shots and seeds.

One form (``ui.train.form``) holds them with the dataset, backbones and head settings; one Launch button
(``ui.train.launch_section``) queues either a comparison (the reference MLP alone on the whole training part:
``core.jobs.runner.comparison_job``, exactly what ``python -m core compare`` records) or the probe suite
(``core.jobs.runner.probe_job``). Bad choices (a variant a backbone lacks, more shots than a class holds) come back
as one-line messages from core before anything is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import streamlit as st

from core.backbones.variants import available_variants
from core.probing.experiment import parse_backbone
from core.probing.presets import HEAD_DEFAULTS
from core.probing.probes import PROTOCOLS, TOKEN_PROTOCOLS
from core.probing.suite import ALL, DEFAULT_SEEDS
from ui import lanes
from ui.state import user_errors

REFERENCE_PROTOCOL = "mlp"  # the reference head: preselected, and alone on the whole training part it is `compare`
PROTOCOL_LABELS = {
    "mlp": "MLP head (reference)",
    "linear": "Linear, 13 learning rates",
    "logreg": "Logistic regression, 15 C values",
    "knn": "Weighted k-NN",
    "ncm": "Nearest class mean",
    "attentive": "Attentive probe on patch tokens (CAPI head, lr x wd grid)",
}
SHOTS_OPTIONS = ["1", "2", "4", "8", "16", "all"]  # images per class; "all" = the whole training part


@dataclass(frozen=True)
class Evaluation:
    """How the chosen backbones are evaluated: the probe suite's axes as the form holds them."""

    protocols: tuple[str, ...] = (REFERENCE_PROTOCOL,)
    features: tuple[str, ...] = ()  # empty: each backbone's own feature
    shots: tuple[str, ...] = ("all",)  # SHOTS_OPTIONS labels
    seed: int = HEAD_DEFAULTS.seed  # the first seed: the whole training part runs once, with it
    draws: int = DEFAULT_SEEDS  # seeds per few-shot level: seed, seed + 1, ...
    tokens: bool = False  # extract the patch tokens first (the attentive protocol trains on them)

    @property
    def is_comparison(self) -> bool:
        """The reference MLP alone on the whole training part with each backbone's own feature: a comparison."""
        return self.protocols == (REFERENCE_PROTOCOL,) and self.shots == ("all",) and not self.features

    @property
    def seeds(self) -> list[int]:
        """The suite's seeds: ``draws`` of them from ``seed`` (only the first is used at "all")."""
        few_shot = any(label != "all" for label in self.shots)
        return list(range(self.seed, self.seed + (self.draws if few_shot else 1)))


def shots_levels(labels: list[str]) -> list[int | None]:
    """The multiselect's labels as the suite's levels (``ALL`` for "all"), smallest first."""
    return sorted(
        (ALL if label == "all" else int(label) for label in labels), key=lambda s: float("inf") if s is ALL else s
    )


def variant_options(backbones: list[str]) -> list[str]:
    """Every variant some chosen backbone has, in core.backbones.variants order (each backbone's default first)."""
    return list(dict.fromkeys(v for spec in backbones for v in available_variants(parse_backbone(spec).backbone)))


def evaluation_inputs(*, dataset: str, backbones: list[str]) -> Evaluation:
    """Draw the evaluation inputs for ``backbones`` on ``dataset``; returns what they hold now."""
    protocols = st.multiselect(
        "Protocols",
        [*PROTOCOLS, *TOKEN_PROTOCOLS],
        default=[REFERENCE_PROTOCOL],
        format_func=PROTOCOL_LABELS.get,
        key="train_protocols",
        help="Each protocol trains on the cached features; its hyperparameters are chosen on the validation part and "
        "the test part is scored once, with a 95 % bootstrap interval. The reference MLP alone on every image is "
        "the reference comparison (`python -m core compare`); with more protocols, variants or few-shot levels it "
        "is the probe suite (`python -m core probe`).",
    )
    with user_errors():
        options = variant_options(backbones) if backbones else []
    columns = st.columns([3, 3, 1, 1.3])
    features = columns[0].multiselect(
        "Feature variants",
        options,
        key="train_features",
        help="Empty: each backbone's own feature (the CLS token of a ViT, the pooled output of a CNN).",
    )
    shots = columns[1].multiselect(
        "Images per class",
        SHOTS_OPTIONS,
        default=["all"],
        key="train_shots",
        help="all: the whole training part. A number: that many training images per class, drawn at random once "
        "per seed (the validation part stays whole at every level).",
    )
    seed = int(
        columns[2].number_input(
            "Seed",
            min_value=0,
            max_value=2**31 - 1,
            value=HEAD_DEFAULTS.seed,
            key="train_seed",
            help="The whole training part runs once, with this seed; few-shot levels use this seed and the next ones.",
        )
    )
    few_shot = any(label != "all" for label in shots)
    draws = int(
        columns[3].number_input(
            "Draws per level",
            min_value=1,
            max_value=50,
            value=DEFAULT_SEEDS,
            key="train_draws",
            disabled=not few_shot,
            help="Random draws (seeds) per few-shot level, for a mean and std; the whole training part has "
            "nothing to draw and runs once.",
        )
    )
    tokens = False
    if any(p in TOKEN_PROTOCOLS for p in protocols):
        with user_errors():
            tokens = lanes.tokens_option(SimpleNamespace(dataset=dataset, backbones=backbones), protocols)
    return Evaluation(
        protocols=tuple(protocols),
        features=tuple(features),
        shots=tuple(shots),
        seed=seed,
        draws=draws,
        tokens=bool(tokens),
    )
