"""Dataset: choose or prepare a dataset, see its class counts per split, sample photos of each class and the
images excluded from it. The parts live in ``ui.dataset``.

Preparing (the Oxford 17 download, generating Synthetic Flowers) runs as a background job with a progress
bar, so the page stays usable. ``?dataset=<key>`` opens a dataset directly (other pages link here that way).
"""

import streamlit as st

from ui.auth import require_access
from ui.dataset import dataset_page

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/photo_library: Dataset")
dataset_page(st.query_params.get("dataset"))
