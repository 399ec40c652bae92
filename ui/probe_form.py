"""The Train page's probe suite: protocols, feature variants, shots and seeds, launched through the job runner.

It reuses the Train form's dataset, backbones, device and precision (``ui.train.TrainForm``) and queues
``core.jobs.runner.probe_job``; progress shows in the same job list. Bad choices (a variant a backbone lacks,
more shots than a class holds) come back as one-line messages from core before anything is recorded.
"""

from __future__ import annotations

import streamlit as st

from core.backbones.variants import available_variants
from core.data.datasets import DEFAULT_SPLIT
from core.jobs.runner import probe_job
from core.probing.experiment import parse_backbone
from core.probing.probes import PROTOCOLS, TOKEN_PROTOCOLS
from core.probing.suite import ALL, DEFAULT_SEEDS, plan_suite
from ui import lanes
from ui.state import job_runner, user_errors, workspace

PROTOCOL_LABELS = {
    "mlp": "MLP head (reference)",
    "linear": "Linear, 13 learning rates",
    "logreg": "Logistic regression, 15 C values",
    "knn": "Weighted k-NN",
    "ncm": "Nearest class mean",
    "attentive": "Attentive probe on patch tokens (CAPI head, lr x wd grid)",
}
SHOTS_OPTIONS = ["1", "2", "4", "8", "16", "all"]  # images per class; "all" = the whole training part


def shots_levels(labels: list[str]) -> list[int | None]:
    """The multiselect's labels as the suite's levels (``ALL`` for "all"), smallest first."""
    return sorted(
        (ALL if label == "all" else int(label) for label in labels), key=lambda s: float("inf") if s is ALL else s
    )


def variant_options(backbones: list[str]) -> list[str]:
    """Every variant some chosen backbone has, in core.backbones.variants order (each backbone's default first)."""
    return list(dict.fromkeys(v for spec in backbones for v in available_variants(parse_backbone(spec).backbone)))


def probe_section(choice) -> None:
    """The probe suite's inputs and Launch button, for the backbones and dataset of the Train form ``choice``."""
    with st.expander(
        "Probe suite: k-NN, logistic regression, linear sweep, nearest class mean, few-shot curves",
        icon=":material/science:",
    ):
        st.caption(
            "Each probe on the cached features, its one hyperparameter chosen on the validation part, "
            "the test part scored once, with a 95 % bootstrap interval. Few-shot levels train on that many "
            "images per class, over several random draws; the validation part stays whole at every level."
        )
        protocols = st.multiselect(
            "Protocols",
            [*PROTOCOLS, *TOKEN_PROTOCOLS],
            default=list(PROTOCOLS),
            format_func=PROTOCOL_LABELS.get,
            key="probe_protocols",
        )
        with user_errors():
            tokens = lanes.tokens_option(choice, protocols)
        with user_errors():
            options = variant_options(choice.backbones) if choice.backbones else []
            features = st.multiselect(
                "Feature variants",
                options,
                key="probe_features",
                help="Empty: each backbone's own feature (the CLS token of a ViT, the pooled output of a CNN).",
            )
        columns = st.columns([3, 1])
        shots = columns[0].multiselect("Images per class", SHOTS_OPTIONS, default=["all"], key="probe_shots")
        seeds = int(
            columns[1].number_input(
                "Draws per level", min_value=1, max_value=50, value=DEFAULT_SEEDS, key="probe_seeds"
            )
        )
        split = DEFAULT_SPLIT if choice.split == "all" else choice.split
        if choice.split == "all":
            st.caption(f"The probe suite runs on one split: split {DEFAULT_SPLIT}.")
        ready = bool(choice.backbones and protocols and shots)
        if st.button("Launch probe suite", icon=":material/play_arrow:", disabled=not ready, key="probe_launch"):
            with user_errors():
                kwargs = {
                    "backbones": choice.backbones,
                    "protocols": protocols,
                    "features": features or None,
                    "shots": shots_levels(shots),
                    "seeds": seeds,
                }
                plan = plan_suite(**kwargs)  # refuses bad choices here, with the message, before anything is queued
                target = probe_job(
                    dataset=choice.dataset,
                    split=split,
                    device=choice.device,
                    precision=choice.precision,
                    runtime=choice.runtime,
                    workspace=workspace(),
                    **kwargs,
                )
                if tokens:  # the patch tokens first, in the same job (said and checked against the disk there)
                    target = lanes.tokens_then(target, choice=choice, workspace=workspace())
                job = job_runner().submit(
                    f"Probe suite ({plan.runs} runs) on {choice.dataset_name}",
                    target,
                    kind="probe",
                    key=choice.dataset,
                )
                st.success(
                    f"Queued as job {job.id}: {plan.runs} runs; its progress is below.", icon=":material/rocket_launch:"
                )
        if not ready:
            st.caption("Choose at least one backbone, protocol and level to launch.")
