"""Health: what a backbone's features say about the dataset: likely label errors, duplicates and train/test
leakage, outliers; exclude images from later runs. The parts live in ``ui.health``, the engine in
``core.health.checks``.
"""

import streamlit as st

from ui.auth import require_access
from ui.dataset import excluded_section
from ui.health import form, health_jobs, lookup, offer_next_step, show_report
from ui.state import cached_dataset, user_errors

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/health_and_safety: Health")
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
    offer_next_step(choice, has_features=has_features, n_images=len(dataset.image_paths))
health_jobs()
if report is not None:
    show_report(report, dataset.root)
st.subheader("Excluded images")
excluded_section(choice.dataset)
