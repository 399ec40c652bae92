"""Home: what Flower Probe does, the workspace's state, and one button for the reference comparison or the offline demo.

The parts live in ``ui.home``; the ready-made experiments in ``core.probing.presets``.
"""

import streamlit as st

from ui.auth import require_access
from ui.home import ready_made_comparisons, workspace_summary

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/local_florist: Flower Probe")
st.markdown(
    "How good are a frozen vision backbone's features for *your* image classes?  \n"
    "Flower Probe extracts features once with a frozen backbone, trains a small head on them, "
    "and measures test accuracy.  \n"
    "Compare backbones side by side, explore the embedding with photos on hover, and classify a photo of your own."
)
workspace_summary()
ready_made_comparisons()
