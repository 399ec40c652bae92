"""Health: what a backbone's features say about the dataset: likely label errors, duplicates and train/test
leakage, outliers; exclude images from later runs. The parts live in ``ui.health``, the engine in
``core.health.checks``.
"""

import streamlit as st

from ui.auth import require_access
from ui.dataset import excluded_section
from ui.health import form, health_jobs, lookup, queue_check, queue_extraction, show_report
from ui.state import cached_dataset, user_errors

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/health_and_safety: Health")
st.caption(
    "Cached features find the photos whose label disagrees with everything like them, the same photo filed twice "
    "(worst across train and test) and the photos that look like nothing else."
)
choice = form()
if choice is None:
    st.stop()
report, has_features, dataset = None, False, None
with user_errors():
    dataset = cached_dataset(choice.dataset)
    report, has_features = lookup(choice)
if dataset is None:
    st.stop()
if report is None:
    if has_features:
        st.info(
            "The features are cached; the check itself takes seconds to a minute.", icon=":material/health_and_safety:"
        )
        st.button(
            "Run the health check",
            type="primary",
            on_click=queue_check,
            args=(choice,),
            key="health_run",
            icon=":material/play_arrow:",
        )
    else:
        st.info(
            f"No cached features of this backbone for this dataset yet: extracting them is a forward pass over "
            f"{len(dataset.image_paths)} images (minutes on a CPU).",
            icon=":material/memory:",
        )
        st.button(
            "Extract features",
            type="primary",
            on_click=queue_extraction,
            args=(choice,),
            key="health_extract",
            icon=":material/memory:",
        )
health_jobs()
if report is not None:
    show_report(report, dataset.root)
st.subheader("Excluded images")
excluded_section(choice.dataset)
