"""The Train page's parts: the one evaluation form, its launch (with the expected duration), the live job list.

The form holds dataset, split, backbones, then how to evaluate them (``ui.probe_form``: protocols with the
reference MLP preselected, feature variants, shots, seeds) and the MLP's settings while it is chosen. One Launch
queues a comparison when the reference MLP runs alone on the whole training part (exactly what
``python -m core compare`` records), else the probe suite.

The form starts from ``core.probing.presets`` (the reference backbones when their files are here, else the offline
demo; the head inputs from ``HEAD_DEFAULTS``). Backbones are chosen as specs
(``core.probing.experiment.parse_backbone``):
each built-in pretrained and with random weights, so the same architecture can run both ways in one
comparison. The job list is a fragment that reruns itself every few seconds while a job runs (every 15 s otherwise,
``ui.jobs.live_jobs``); it only reads snapshots from the job runner and draws light elements, so the form above
stays live while jobs run.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from core.backbones.registry import get_config, list_backbones, parse_weights_overrides
from core.data.datasets import DEFAULT_SPLIT, OXFORD17_KEY, list_datasets
from core.features.extract import DEVICES, PRECISIONS
from core.features.runtime import RUNTIMES
from core.jobs.runner import comparison_job, probe_job
from core.probing.experiment import WEIGHTS_SEPARATOR, BackboneChoice, parse_backbone
from core.probing.heads import HEAD_ARCHITECTURES, HeadConfig
from core.probing.presets import HEAD_DEFAULTS, OFFLINE_DEMO, REFERENCE
from core.probing.probes import ProbeConfig
from core.probing.suite import plan_suite
from ui import lanes
from ui.jobs import any_job_active, job_card, live_jobs
from ui.labels import format_age
from ui.launch import duration_text, expected_duration, files_to_fetch, missing_files_markdown
from ui.probe_form import REFERENCE_PROTOCOL, Evaluation, evaluation_inputs, shots_levels
from ui.state import device_label, job_runner, list_runs, user_errors, workspace

HEAD_LABELS = {"mlp": "MLP (reference)", "linear": "Linear probe"}
# TrainForm's device, precision and CPU runtime, in the form's Advanced part: (column, label, choices, help; "{here}"
# is this machine's device). Each widget's key is "train_<field>".
COMPUTE_INPUTS = {
    "device": (0, "Device", DEVICES, "auto picks CUDA, then Apple MPS, then CPU. Here: {here}"),
    "precision": (1, "Precision", PRECISIONS, "auto: mixed precision on GPU, bf16 on CPUs with native bf16."),
    "runtime": (
        1,
        "CPU runtime",
        RUNTIMES,
        "How features are computed on a CPU. auto: PyTorch and onnxruntime are timed once per backbone on this "
        "machine and the faster is kept (the figures go into the workspace's measured rates); onnxruntime computes "
        "fp32 and falls back to PyTorch, saying why, when a backbone does not export. GPUs use PyTorch.",
    ),
}
JOBS_SHOWN = 10


@dataclass(frozen=True)
class TrainForm:
    """What the form asks for: a comparison (``run_comparison``'s arguments) minus the workspace."""

    dataset: str
    dataset_name: str
    split: str
    backbones: list[str]  # specs: "resnet50", "resnet50@random"
    head: dict  # HeadConfig's fields, validated when the job is built (empty: the MLP protocol is not chosen)
    device: str
    precision: str
    runtime: str = "auto"  # CPU feature runtime (core.features.runtime.RUNTIMES)
    evaluation: Evaluation = Evaluation()  # protocols, variants, shots, seeds (the reference MLP alone by default)

    @property
    def head_config(self) -> HeadConfig:
        """The reference head: the form's settings with the evaluation's seed (raises on a bad value)."""
        return HeadConfig(**{**self.head, "seed": self.evaluation.seed})

    @property
    def title(self) -> str:
        names = ", ".join(parse_backbone(spec).label for spec in self.backbones)
        return f"{names} on {self.dataset_name}, split {self.split}"


def backbone_options() -> list[str]:
    """Every built-in backbone, pretrained then with random weights, as specs."""
    return [spec for name in list_backbones() for spec in (name, BackboneChoice(name, "random").spec)]


def default_backbones(reference_ready: bool) -> list[str]:
    """The reference pair when its weights are here, else the offline demo's pretrained-vs-random pair."""
    return list(REFERENCE.backbones if reference_ready else OFFLINE_DEMO.backbones)


def default_dataset(entries: dict, reference_ready: bool) -> str:
    """Offline, the first dataset that needs no download; with the reference files here, Oxford 17."""
    return next(
        (key for key, entry in entries.items() if entry.prepared or key != OXFORD17_KEY or reference_ready),
        OXFORD17_KEY,
    )


def head_inputs() -> dict:
    """The reference MLP's settings (``HeadConfig``'s fields, validated when the job is built), in view while the
    MLP protocol is chosen; its seed is the evaluation's."""
    st.markdown("**Reference MLP head**")
    columns = st.columns([1.2, 1, 1, 1, 1.3], vertical_alignment="bottom")
    return {
        "architecture": columns[0].selectbox(
            "Head architecture",
            HEAD_ARCHITECTURES,
            index=HEAD_ARCHITECTURES.index(HEAD_DEFAULTS.architecture),
            format_func=HEAD_LABELS.get,
            key="train_head",
            help="MLP: Linear(features, hidden) → ReLU → Linear(hidden, classes), the reference head. "
            "Linear probe: one Linear layer, trained the same way.",
        ),
        "epochs": _head_number(columns[1], "epochs", "Epochs", (1, 1000), key="train_epochs"),
        "lr": _head_number(columns[2], "lr", "Learning rate", (0.0, 1.0), step=1e-4, format="%.4f", key="train_lr"),
        "batch_size": _head_number(columns[3], "batch_size", "Head batch size", (1, 4096), key="train_batch"),
        "standardise": columns[4].toggle(
            "Standardise features",
            value=HEAD_DEFAULTS.standardise,
            key="train_standardise",
            help="Centre and scale each feature by the training images' mean and std before the head "
            "(off in the reference protocol). Helps features of awkward scale, such as a random-weight backbone's.",
        ),
    }


def _head_number(column, field: str, label: str, bounds: tuple, *, key: str, **options) -> int | float:
    """A number input for ``HeadConfig``'s ``field`` within ``bounds`` (lowest, highest), starting at its default in
    ``HEAD_DEFAULTS``; the value comes back as that default's type (int or float)."""
    default = getattr(HEAD_DEFAULTS, field)
    low, high = bounds
    return type(default)(column.number_input(label, min_value=low, max_value=high, value=default, key=key, **options))


def form() -> TrainForm:
    """Draw what a launch does, then the form; returns what the form holds now."""
    st.caption(
        "Frozen backbone → cached features → each protocol trained on them → test accuracy. One run per backbone, "
        "feature variant, protocol, shots level and seed."
    )
    entries = {entry.key: entry for entry in list_datasets(workspace())}
    reference_ready = not files_to_fetch(dataset=REFERENCE.dataset, backbones=list(REFERENCE.backbones))
    dataset_key = st.selectbox(
        "Dataset",
        list(entries),
        index=list(entries).index(default_dataset(entries, reference_ready)),
        key="train_dataset",
        format_func=lambda key: entries[key].name + ("" if entries[key].prepared else f" ({entries[key].state})"),
    )
    if dataset_key == OXFORD17_KEY:
        split = st.segmented_control(
            "Split",
            ["1", "2", "3", "all"],
            default=REFERENCE.split,
            required=True,
            key="train_split",
            help="Oxford 17's three official train/val/test splits; 'all' runs each and Compare shows mean and std.",
        )
    else:
        split = DEFAULT_SPLIT
        st.caption(
            f"Split {DEFAULT_SPLIT}: the dataset's train/val/test folders, or a seeded stratified 50/25/25 split."
        )
    backbones = st.multiselect(
        "Backbones",
        backbone_options(),
        default=default_backbones(reference_ready),
        key="train_backbones",
        format_func=lambda spec: parse_backbone(spec).label,
        accept_new_options=True,
        help="Each backbone pretrained or with random weights (the baseline that shows how much pretraining matters); "
        "pick both to compare one architecture both ways. Type timm:<model name> for any timm model "
        "(timm:vit_small_patch14_reg4_dinov2.lvd142m; `python -m core backbones --timm dinov2` lists them).\n\n"
        + "\n".join(f"- {name}: {get_config(name).description}" for name in list_backbones()),
    )
    evaluation = evaluation_inputs(dataset=dataset_key, backbones=list(backbones))
    head = head_inputs() if REFERENCE_PROTOCOL in evaluation.protocols else {}
    with st.expander("Advanced"):
        columns = st.columns(4)
        here = device_label()
        compute = {
            field: columns[column].selectbox(label, choices, key=f"train_{field}", help=tip.format(here=here))
            for field, (column, label, choices, tip) in COMPUTE_INPUTS.items()
        }
        if head:
            head["hidden_dim"] = _head_number(
                columns[2], "hidden_dim", "Hidden units (MLP)", (1, 8192), key="train_hidden"
            )
            head["weight_decay"] = _head_number(
                columns[3], "weight_decay", "Weight decay (MLP)", (0.0, 10.0), format="%.4f", key="train_wd"
            )
        checkpoint = st.text_input(
            "Own checkpoint (NAME=PATH)",
            key="train_checkpoint",
            placeholder="timm:convnext_tiny=/data/my_finetuned.safetensors",
            help="Adds a run of backbone NAME with this .pth state dict or .safetensors file (on the server's disk).",
        ).strip()
        if checkpoint:
            with user_errors():
                backbones = [
                    *backbones,
                    *(
                        f"{name}{WEIGHTS_SEPARATOR}{path}"
                        for name, path in parse_weights_overrides([checkpoint]).items()
                    ),
                ]
    return TrainForm(
        dataset=dataset_key,
        dataset_name=entries[dataset_key].name,
        split=split,
        backbones=list(backbones),
        head=head,
        evaluation=evaluation,
        **compute,
    )


def launch_section(choice: TrainForm) -> None:
    """What the run would download, how long it should take, and the Launch button."""
    missing = files_to_fetch(dataset=choice.dataset, backbones=choice.backbones)
    if missing:
        st.warning(
            "This run downloads these files first, which needs internet access:\n\n"
            + missing_files_markdown(missing)
            + "\n\nOffline, put them in those folders by hand, or choose random weights or efficientnet_lite0.",
            icon=":material/cloud_download:",
        )
    if choice.backbones:
        st.caption(
            duration_text(expected_duration(dataset=choice.dataset, backbones=choice.backbones, split=choice.split))
        )
    evaluation = choice.evaluation
    ready = bool(choice.backbones and evaluation.protocols and evaluation.shots)
    if not evaluation.is_comparison and choice.split == "all":
        st.caption(f"With protocols other than the reference MLP alone, the suite runs on one split: {DEFAULT_SPLIT}.")
    if st.button("Launch", type="primary", icon=":material/play_arrow:", disabled=not ready, key="train_launch"):
        with user_errors():
            job, runs = _submit(choice)
            what = f": {runs} runs" if runs is not None else ""
            st.success(f"Queued as job {job.id}{what}; its progress is below.", icon=":material/rocket_launch:")
    if not ready:
        st.caption("Choose at least one backbone, protocol and number of images per class to launch.")


def _submit(choice: TrainForm) -> tuple:
    """Queue the form's evaluation: a comparison when it is the reference MLP alone on the whole training part
    (what ``python -m core compare`` records), else the probe suite. Returns the job's snapshot and the suite's
    number of runs (None for a comparison). Bad values raise before anything is queued."""
    evaluation = choice.evaluation
    head = choice.head_config if REFERENCE_PROTOCOL in evaluation.protocols else HEAD_DEFAULTS
    runtime = {"device": choice.device, "precision": choice.precision, "runtime": choice.runtime}
    if evaluation.is_comparison:
        target = comparison_job(
            dataset=choice.dataset,
            backbones=choice.backbones,
            split=choice.split,
            head=head,
            workspace=workspace(),
            **runtime,
        )
        return job_runner().submit(choice.title, target, kind="comparison", key=choice.title), None
    suite = {
        "backbones": choice.backbones,
        "protocols": list(evaluation.protocols),
        "features": list(evaluation.features) or None,
        "shots": shots_levels(list(evaluation.shots)),
        "seeds": evaluation.seeds,
    }
    plan = plan_suite(**suite)  # refuses bad choices here, with the message, before anything is queued
    split = DEFAULT_SPLIT if choice.split == "all" else choice.split
    target = probe_job(
        dataset=choice.dataset, split=split, config=ProbeConfig(mlp=head), workspace=workspace(), **runtime, **suite
    )
    if evaluation.tokens:  # the patch tokens first, in the same job (said and checked against the disk there)
        target = lanes.tokens_then(target, choice=choice, workspace=workspace())
    job = job_runner().submit(
        f"Probe suite ({plan.runs} runs) on {choice.dataset_name}, split {split}",
        target,
        kind="probe",
        key=choice.dataset,
    )
    return job, plan.runs


def job_list() -> None:
    """The server's jobs, newest first, redrawn on their own while one runs (the form above is not
    rerun; ``ui.jobs.live_jobs``)."""
    live_jobs(_job_cards, busy=any_job_active)


def _job_cards() -> None:
    shown = job_runner().jobs()[:JOBS_SHOWN]
    if not shown:
        st.caption(
            "No jobs since the server started. Launched jobs show here with live progress; "
            "every finished run is on the Compare page."
        )
    for job in shown:
        job_card(job)


def unfinished_runs() -> None:
    """Runs that failed, were cancelled or interrupted, with the reason."""
    unfinished = [run for run in list_runs() if run["status"] not in ("completed", "running")]
    if unfinished:
        with st.expander(f"Runs that did not complete ({len(unfinished)})"):
            st.dataframe(
                pd.DataFrame(
                    {
                        "run": [r["id"] for r in unfinished],
                        "backbone": [BackboneChoice(r["backbone"], r["weights"]).label for r in unfinished],
                        "dataset": [r["dataset_name"] for r in unfinished],
                        "status": [r["status"] for r in unfinished],
                        "when": [format_age(r["created_at"]) for r in unfinished],
                        "reason": [r["error"] for r in unfinished],
                    }
                ),
                hide_index=True,
            )
