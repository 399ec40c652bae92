"""Classify page: drop in photos (or pick test images) and see what a trained run says, and why.

For each image: the photo, the run's top-5 classes (and a warning when it looks like no training
image), the nearest training images in the backbone's feature space, and where the image lands on
the run's map (t-SNE, UMAP or PCA); optionally a second run side by side; a table and CSV for a
batch. The logic lives in ``ui.classify``; predictions are ``core.predict.classify.Predictor.predict``, the
same call as ``python -m core predict``.
"""

from __future__ import annotations

import streamlit as st

from ui import bundle, classify, lanes
from ui.auth import require_access
from ui.state import list_runs, user_errors

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title("Classify")
st.caption(
    "Drop in photos and see what a trained run says: top-5 classes, the training images nearest "
    "in its feature space, and where each photo lands on the run's map."
)
with user_errors():
    runs = classify.choose_runs()
    predictors = classify.load_predictors(runs) if runs else None
    if predictors:
        bundle.download_models(runs, key="classify")
    items = classify.choose_images(predictors[0]) if predictors else []
    if items:
        classify.show_results(predictors, items)
        # Where an attentive probe (patch tokens) looks in these photos, when there is one (issue 25).
        lanes.show_attention(
            [(name, source) for _, name, source in items], list_runs(status="completed"), key="classify"
        )
