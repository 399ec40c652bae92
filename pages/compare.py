"""Compare: completed runs side by side.

Pick a dataset (``?dataset=<key>`` preselects one) and runs (by default the newest reference run per backbone,
weights and split), then the views the user picks (``ui.compare.VIEWS``; it opens on the overview): the runs
table with 95 % intervals (mean and std where an experiment has several runs, e.g. the three Oxford 17 splits),
CSV downloads, unreadable files a run skipped, the protocols table and a paired comparison of two runs; accuracy
against measured cost and calibration (``ui.choose``); few-shot curves with the labels a target accuracy needs;
training curves; confusion matrices whose cells open a gallery of those test photos; per-class accuracy;
the misclassified photos; how much two runs' features agree and whether they make the same mistakes. The parts live
in ``ui.compare`` (the agreement in ``ui.compare_agreement``).
"""

import streamlit as st

from ui import bundle, choose, compare, compare_agreement, lanes
from ui.auth import require_access
from ui.widgets import nothing_to_show

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/compare_arrows: Compare")
completed = compare.completed_runs()
if not completed:
    nothing_to_show(
        "No completed runs yet. Launch a comparison on the Train page, or the one-click comparison on Home; "
        "runs appear here as they finish.",
        ("pages/train.py", "Train", ":material/model_training:"),
        ("pages/home.py", "Home", ":material/home:"),
    )
    st.stop()

picked = compare.choose_runs(completed)
if picked is None:
    st.stop()
dataset_key, chosen = picked
if any(run["synthetic"] for run in chosen):
    st.badge(
        "Synthetic data",
        icon=":material/auto_awesome:",
        color="orange",
        help="These runs are on a generated dataset, not real photos.",
    )

compare.show_answer([run for run in completed if run["dataset_key"] == dataset_key], chosen)
views = compare.choose_views()
predictions = compare.load_predictions(chosen)
full = [run for run in completed if run["dataset_key"] == dataset_key]
if "Overview" in views:
    table = compare.runs_table(chosen)
    compare.show_runs_table(table, chosen)
    compare.show_downloads(table, predictions)
    bundle.download_models(chosen, key="compare")
    compare.show_skipped(chosen)
    compare.show_protocols(full)
    compare.show_paired(chosen, predictions)
    compare.manage_runs(chosen)
if "Accuracy vs cost" in views:
    choose.show_accuracy_cost(chosen)
if "Calibration" in views:
    choose.show_calibration(chosen)
if "Few-shot curves" in views:
    few_shot = [run for run in compare.completed_runs(few_shot=True) if run["dataset_key"] == dataset_key]
    compare.show_fewshot(few_shot, full)
    choose.show_labels_needed(few_shot + full)  # the suites' runs on the whole training part end their curves
if "Training curves" in views:
    compare.show_curves(chosen)
if "Confusion matrices" in views:
    compare.show_confusions(chosen, predictions)
if "Per-class accuracy" in views:
    compare.show_per_class(chosen)
if "Misclassified" in views:
    compare.show_misclassified(chosen, predictions)
if "Agreement" in views:
    compare_agreement.show_agreement(chosen, predictions)
if "Layer-wise" in views:
    lanes.show_layerwise(full)
