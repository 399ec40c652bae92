"""Home: what Flower Probe does, the state of the workspace, and one button for the reference comparison.

The reference comparison (DINOv2 ViT-S/14 vs ResNet-50 on Oxford 17, 5 epochs) needs two dataset files
and two weights files. The page checks for them on disk (never on the network: a render must not
block) and, when some are missing, names them and offers the offline demo first: Synthetic Flowers with
EfficientNet-Lite0 (pretrained, shipped in a pip package) vs ResNet-50 with random weights.
"""

import pandas as pd
import streamlit as st

from core.datasets import list_datasets
from core.jobs import comparison_job
from core.training import HeadConfig
from ui.auth import require_access
from ui.common import (
    dataset_label, files_to_fetch, format_age, format_bytes, job_runner, list_runs, md, missing_files_markdown, user_errors,
    weights_label, workspace,
)

require_access()  # first: no Streamlit mode runs this page past the access gate

REFERENCE = {"dataset": "oxford17", "backbones": ["dinov2_vits14", "resnet50"], "random_weights_for": ()}
OFFLINE_DEMO = {"dataset": "synthetic", "backbones": ["efficientnet_lite0", "resnet50"], "random_weights_for": ("resnet50",)}
EPOCHS = 5  # the reference experiment's length
RECENT_RUNS = 8


def launch(title: str, comparison: dict) -> None:
    with user_errors():
        job = job_runner().submit(title, comparison_job(**comparison, head=HeadConfig(epochs=EPOCHS), workspace=workspace()))
        st.session_state["home_launched"] = job.id


st.title(":material/local_florist: Flower Probe")
st.markdown(
    "How good are a frozen vision backbone's features for *your* image classes?  \n"
    "Flower Probe extracts features once with a frozen backbone, trains a small head on them, and measures test accuracy.  \n"
    "Compare backbones side by side, explore the embedding with photos on hover, and classify a photo of your own."
)

ws = workspace()
datasets = [d for d in list_datasets(ws) if d.prepared]
runs = list_runs()
completed = [r for r in runs if r["status"] == "completed"]
feature_files = list(ws.features_dir.glob("*.npz"))

st.subheader("Workspace")
st.caption(f"`{ws.root}`")
columns = st.columns(3)
columns[0].metric("Datasets ready", len(datasets))
columns[1].metric("Cached feature sets", len(feature_files), help="One file per (dataset, backbone, weights); reused by every later run.")
columns[2].metric("Completed runs", len(completed))
if datasets:
    st.markdown("Datasets: " + ", ".join(md(d.name) for d in datasets))
if feature_files:
    st.caption(f"Feature cache: {format_bytes(sum(f.stat().st_size for f in feature_files))} in `{ws.features_dir}`")

if completed:
    st.markdown("**Recent runs**")
    st.dataframe(
        pd.DataFrame(
            {
                "run": [r["id"] for r in completed[:RECENT_RUNS]],
                "backbone": [r["backbone"] for r in completed[:RECENT_RUNS]],
                "weights": [weights_label(r["weights"]) for r in completed[:RECENT_RUNS]],
                "dataset": [dataset_label(r["dataset_name"], r["synthetic"]) for r in completed[:RECENT_RUNS]],
                "split": [r["split"] for r in completed[:RECENT_RUNS]],
                "test acc %": [r["test_acc"] for r in completed[:RECENT_RUNS]],
                "finished": [format_age(r["finished_at"]) for r in completed[:RECENT_RUNS]],
            }
        ),
        hide_index=True,
        column_config={"test acc %": st.column_config.NumberColumn(format="%.1f")},
    )
    st.page_link("pages/compare.py", label="Compare runs", icon=":material/compare_arrows:")
else:
    st.info("No runs yet. Start with the button below, or choose your own dataset and backbones on the Train page.", icon=":material/info:")

st.subheader("The reference comparison")
st.markdown(
    "DINOv2 ViT-S/14 vs ResNet-50, each with a small head on frozen features, on the Oxford 17 flowers "
    f"(official split 1, {EPOCHS} epochs). It runs in the background: follow it on the Train page."
)
missing = files_to_fetch(**REFERENCE)
if not missing:
    st.button("Run the reference comparison", type="primary", icon=":material/play_arrow:",
              on_click=launch, args=("Reference: DINOv2 ViT-S/14 vs ResNet-50 on Oxford 17", REFERENCE))
else:
    st.warning(
        "The reference comparison needs files that are not in this workspace yet:\n\n" + missing_files_markdown(missing)
        + "\n\nA run downloads them first, which needs internet access. On an offline machine, download them "
        "elsewhere and put them in those folders, or try the offline demo below.",
        icon=":material/cloud_off:",
    )
    demo_missing = files_to_fetch(**OFFLINE_DEMO)
    st.markdown(
        "**Offline demo: how much does pretraining matter?** Synthetic Flowers (17 procedurally drawn classes, "
        "generated here in seconds) with EfficientNet-Lite0 pretrained on ImageNet vs ResNet-50 with random weights."
    )
    if demo_missing:
        st.error("The offline demo needs these files too:\n\n" + missing_files_markdown(demo_missing), icon=":material/error:")
    buttons = st.container(horizontal=True)
    buttons.button("Run the offline demo", type="primary", icon=":material/play_arrow:", disabled=bool(demo_missing),
                   on_click=launch, args=("Offline demo: EfficientNet-Lite0 vs random ResNet-50 on Synthetic Flowers", OFFLINE_DEMO))
    buttons.button("Download and run the reference comparison", icon=":material/cloud_download:",
                   on_click=launch, args=("Reference: DINOv2 ViT-S/14 vs ResNet-50 on Oxford 17", REFERENCE))

launched = st.session_state.pop("home_launched", None)  # shown once; the job itself lives in the runner
if launched is not None:
    st.success(f"Started as job {launched}.", icon=":material/rocket_launch:")
    st.page_link("pages/train.py", label="Watch its progress on the Train page", icon=":material/model_training:")
