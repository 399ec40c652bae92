"""Train: choose dataset, split, backbones and head settings, launch a comparison, and watch every job live.

The comparison runs in core's job runner (one worker thread per server, jobs queue), never in this
script's thread, so the page stays responsive and teammates' pages keep working. Job state lives in
the runner, not in the browser session: refreshing or closing the tab loses nothing. The job list
below polls the runner every second.
"""

import pandas as pd
import streamlit as st

from core.backbones import get_config, list_backbones
from core.datasets import OXFORD17_KEY, list_datasets
from core.features import DEVICES, PRECISIONS
from core.jobs import comparison_job
from core.training import HEAD_TYPES, HeadConfig
from ui.auth import require_access
from ui.common import (
    device_label, files_to_fetch, format_age, job_card, job_runner, list_runs, missing_files_markdown, user_errors, workspace,
)

require_access()  # first: no Streamlit mode runs this page past the access gate

REFERENCE_BACKBONES = ["dinov2_vits14", "resnet50"]
# Offline, the default is the "how much does pretraining matter" pair, which needs no download.
OFFLINE_BACKBONES, OFFLINE_RANDOM = ["efficientnet_lite0", "resnet50"], ["resnet50"]
HEAD_LABELS = {"mlp": "MLP (reference)", "linear": "Linear probe"}
JOBS_SHOWN = 10

st.title(":material/model_training: Train")
st.caption("Frozen backbone → cached features → a small head trained on them → test accuracy. Each backbone is one run.")
ws = workspace()
entries = {entry.key: entry for entry in list_datasets(ws)}

reference_ready = not files_to_fetch(dataset=OXFORD17_KEY, backbones=REFERENCE_BACKBONES)
# Offline, the first choice is a dataset that needs no download.
default_dataset = next((key for key, entry in entries.items() if entry.prepared or key != OXFORD17_KEY or reference_ready), OXFORD17_KEY)
dataset_key = st.selectbox(
    "Dataset", list(entries), index=list(entries).index(default_dataset), key="train_dataset",
    format_func=lambda key: entries[key].name + (
        "" if entries[key].prepared else " (downloaded when the run starts)" if key == OXFORD17_KEY else " (generated when the run starts)"
    ),
)
if dataset_key == OXFORD17_KEY:
    split = st.segmented_control(
        "Split", ["1", "2", "3", "all"], default="1", required=True, key="train_split",
        help="Oxford 17's three official train/val/test splits; 'all' runs each and Compare shows mean and std.",
    )
else:
    split = "1"
    st.caption("Split 1: the dataset's train/val/test folders, or a seeded stratified 50/25/25 split.")

backbones = st.multiselect(
    "Backbones", list_backbones(), default=REFERENCE_BACKBONES if reference_ready else OFFLINE_BACKBONES, key="train_backbones",
    help="\n".join(f"- {name}: {get_config(name).description}" for name in list_backbones()),
)
random_for = st.multiselect(
    "Random weights for", backbones, default=[] if reference_ready else [b for b in OFFLINE_RANDOM if b in backbones],
    key="train_random", help="A randomly initialised backbone: the baseline that shows how much pretraining matters.",
)

columns = st.columns(5)
head_type = columns[0].selectbox("Head", HEAD_TYPES, format_func=HEAD_LABELS.get, key="train_head",
                                 help="MLP: Linear(features, hidden) → ReLU → Linear(hidden, classes), the reference head. Linear probe: one Linear layer.")
epochs = columns[1].number_input("Epochs", min_value=1, max_value=1000, value=5, key="train_epochs")
lr = columns[2].number_input("Learning rate", min_value=0.0, max_value=1.0, value=1e-3, step=1e-4, format="%.4f", key="train_lr")
batch_size = columns[3].number_input("Batch size", min_value=1, max_value=4096, value=64, key="train_batch")
seed = columns[4].number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, key="train_seed")
with st.expander("Advanced"):
    columns = st.columns(4)
    device = columns[0].selectbox("Device", DEVICES, key="train_device", help=f"auto picks CUDA, then Apple MPS, then CPU. Here: {device_label()}")
    precision = columns[1].selectbox("Precision", PRECISIONS, key="train_precision", help="auto: mixed precision on GPU, bf16 on CPUs with native bf16.")
    hidden_dim = columns[2].number_input("Hidden units (MLP)", min_value=1, max_value=8192, value=128, key="train_hidden")
    weight_decay = columns[3].number_input("Weight decay", min_value=0.0, max_value=10.0, value=0.01, format="%.4f", key="train_wd")
    standardise = st.toggle(
        "Standardise features", key="train_standardise",
        help="Centre and scale each feature by the training images' mean and std before the head (off in the reference "
             "protocol). Helps features of awkward scale, such as a random-weight backbone's.",
    )

missing = files_to_fetch(dataset=dataset_key, backbones=backbones, random_weights_for=tuple(random_for))
if missing:
    st.warning(
        "This run downloads these files first, which needs internet access:\n\n" + missing_files_markdown(missing)
        + "\n\nOffline, put them in those folders by hand, or choose random weights or efficientnet_lite0.",
        icon=":material/cloud_download:",
    )

if st.button("Launch", type="primary", icon=":material/play_arrow:", disabled=not backbones, key="train_launch"):
    with user_errors():
        head = HeadConfig(head=head_type, hidden_dim=int(hidden_dim), epochs=int(epochs), lr=float(lr), weight_decay=float(weight_decay),
                          batch_size=int(batch_size), seed=int(seed), standardise=standardise)
        names = ", ".join(b + (" (random)" if b in random_for else "") for b in backbones)
        job = job_runner().submit(
            f"{names} on {entries[dataset_key].name}, split {split}",
            comparison_job(dataset=dataset_key, backbones=list(backbones), split=split, head=head, random_weights_for=tuple(random_for),
                           device=device, precision=precision, workspace=ws),
        )
        st.success(f"Queued as job {job.id}; its progress is below.", icon=":material/rocket_launch:")
if not backbones:
    st.caption("Choose at least one backbone to launch.")


@st.fragment(run_every=1.0)
def jobs() -> None:
    shown = job_runner().jobs()[:JOBS_SHOWN]
    if not shown:
        st.caption("No jobs since the server started. Launched jobs show here with live progress; every finished run is on the Compare page.")
    for job in shown:
        job_card(job)


st.subheader("Jobs")
jobs()

unfinished = [run for run in list_runs() if run["status"] not in ("completed", "running")]
if unfinished:
    with st.expander(f"Runs that did not complete ({len(unfinished)})"):
        st.dataframe(
            pd.DataFrame({
                "run": [r["id"] for r in unfinished], "backbone": [r["backbone"] for r in unfinished], "dataset": [r["dataset_name"] for r in unfinished],
                "status": [r["status"] for r in unfinished], "when": [format_age(r["created_at"]) for r in unfinished],
                "reason": [r["error"] for r in unfinished],
            }),
            hide_index=True,
        )
