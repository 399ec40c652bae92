"""The Train page's parts: the experiment form, its launch (with the expected duration), the live job list.

The form starts from ``core.probing.presets`` (the reference backbones when their files are here, else the offline
demo; the head inputs from ``HEAD_DEFAULTS``). Backbones are chosen as specs
(``core.probing.experiment.parse_backbone``):
each built-in pretrained and with random weights, so the same architecture can run both ways in one
comparison. The job list is a fragment that reruns itself every second while a job runs (every 15 s otherwise,
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
from core.jobs.runner import comparison_job
from core.probing.experiment import WEIGHTS_SEPARATOR, BackboneChoice, parse_backbone
from core.probing.heads import HEAD_ARCHITECTURES, HeadConfig
from core.probing.presets import HEAD_DEFAULTS, OFFLINE_DEMO, REFERENCE
from ui.jobs import any_job_active, job_card, live_jobs
from ui.labels import format_age
from ui.launch import duration_text, expected_duration, files_to_fetch, missing_files_markdown
from ui.state import device_label, job_runner, list_runs, user_errors, workspace

HEAD_LABELS = {"mlp": "MLP (reference)", "linear": "Linear probe"}
JOBS_SHOWN = 10
JOBS_REFRESH_S = 1.0


@dataclass(frozen=True)
class TrainForm:
    """What the form asks for: a comparison (``run_comparison``'s arguments) minus the workspace."""

    dataset: str
    dataset_name: str
    split: str
    backbones: list[str]  # specs: "resnet50", "resnet50@random"
    head: dict  # HeadConfig's fields, validated when the job is built
    device: str
    precision: str
    runtime: str = "auto"  # CPU feature runtime (core.features.runtime.RUNTIMES)

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


def form() -> TrainForm:
    """Draw the form; returns what it holds now."""
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
    columns = st.columns(5)
    head = {
        "architecture": columns[0].selectbox(
            "Head",
            HEAD_ARCHITECTURES,
            index=HEAD_ARCHITECTURES.index(HEAD_DEFAULTS.architecture),
            format_func=HEAD_LABELS.get,
            key="train_head",
            help="MLP: Linear(features, hidden) → ReLU → Linear(hidden, classes), the reference head. "
            "Linear probe: one Linear layer.",
        ),
        "epochs": int(
            columns[1].number_input(
                "Epochs", min_value=1, max_value=1000, value=HEAD_DEFAULTS.epochs, key="train_epochs"
            )
        ),
        "lr": float(
            columns[2].number_input(
                "Learning rate",
                min_value=0.0,
                max_value=1.0,
                value=HEAD_DEFAULTS.lr,
                step=1e-4,
                format="%.4f",
                key="train_lr",
            )
        ),
        "batch_size": int(
            columns[3].number_input(
                "Batch size", min_value=1, max_value=4096, value=HEAD_DEFAULTS.batch_size, key="train_batch"
            )
        ),
        "seed": int(
            columns[4].number_input(
                "Seed", min_value=0, max_value=2**31 - 1, value=HEAD_DEFAULTS.seed, key="train_seed"
            )
        ),
    }
    with st.expander("Advanced"):
        columns = st.columns(4)
        device = columns[0].selectbox(
            "Device",
            DEVICES,
            key="train_device",
            help=f"auto picks CUDA, then Apple MPS, then CPU. Here: {device_label()}",
        )
        precision = columns[1].selectbox(
            "Precision",
            PRECISIONS,
            key="train_precision",
            help="auto: mixed precision on GPU, bf16 on CPUs with native bf16.",
        )
        runtime = columns[1].selectbox(
            "CPU runtime",
            RUNTIMES,
            key="train_runtime",
            help="How features are computed on a CPU. auto: PyTorch and onnxruntime are timed once per backbone on "
            "this machine and the faster is kept (the figures go into the workspace's measured rates); onnxruntime "
            "computes fp32 and falls back to PyTorch, saying why, when a backbone does not export. GPUs use PyTorch.",
        )
        head["hidden_dim"] = int(
            columns[2].number_input(
                "Hidden units (MLP)", min_value=1, max_value=8192, value=HEAD_DEFAULTS.hidden_dim, key="train_hidden"
            )
        )
        head["weight_decay"] = float(
            columns[3].number_input(
                "Weight decay",
                min_value=0.0,
                max_value=10.0,
                value=HEAD_DEFAULTS.weight_decay,
                format="%.4f",
                key="train_wd",
            )
        )
        head["standardise"] = st.toggle(
            "Standardise features",
            value=HEAD_DEFAULTS.standardise,
            key="train_standardise",
            help="Centre and scale each feature by the training images' mean and std before the head "
            "(off in the reference protocol). Helps features of awkward scale, such as a random-weight backbone's.",
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
        device=device,
        precision=precision,
        runtime=runtime,
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
    if st.button(
        "Launch", type="primary", icon=":material/play_arrow:", disabled=not choice.backbones, key="train_launch"
    ):
        with user_errors():
            job = job_runner().submit(
                choice.title,
                comparison_job(
                    dataset=choice.dataset,
                    backbones=choice.backbones,
                    split=choice.split,
                    head=HeadConfig(**choice.head),
                    device=choice.device,
                    precision=choice.precision,
                    runtime=choice.runtime,
                    workspace=workspace(),
                ),
                kind="comparison",
                key=choice.title,
            )
            st.success(f"Queued as job {job.id}; its progress is below.", icon=":material/rocket_launch:")
    if not choice.backbones:
        st.caption("Choose at least one backbone to launch.")


def job_list() -> None:
    """The server's jobs, newest first, redrawn on their own every second while one runs (the form above is not
    rerun; ``ui.jobs.live_jobs``)."""
    live_jobs(_job_cards, busy=any_job_active, refresh_s=JOBS_REFRESH_S)


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
