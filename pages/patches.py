"""Patches: what a backbone sees where inside each photo, as in the DINOv2 paper's patch-PCA figure.

Pick photos (dataset or upload) and a backbone; its patch features (a ViT's patch tokens, or a CNN's
last feature map) are computed in the job queue and cached per image; one PCA over all the photos'
patches then shows, per photo, the first component as a heat map (the foreground, with a threshold)
and the first three components of the foreground patches as RGB. The logic lives in ``ui.patches``.
"""

from __future__ import annotations

import streamlit as st

from ui import lanes, patches
from ui.auth import require_access
from ui.state import list_runs, user_errors

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/grid_on: Patches")
with user_errors():
    inputs = patches.choose_inputs()
    job = patches.patch_job(inputs) if inputs is not None else None
    if job is not None:
        patches.show_views(job, inputs)
    if inputs is not None:  # an attentive run's attention over the same photos (issue 25)
        lanes.show_attention(inputs.images, list_runs(status="completed"), key="patches")
