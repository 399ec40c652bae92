"""Explorer: 2-D maps (t-SNE, UMAP or PCA) of runs' cached features, with the photo under the mouse.

Choose one or two completed runs on the same dataset; their maps sit side by side with the same
colour per class. Hovering a point shows its photo, class, file and prediction in the browser; a
click or a box/lasso selection opens a gallery, and for a single photo its nearest neighbours in
each backbone's full feature space. The logic lives in ``ui.explorer``.
"""

from __future__ import annotations

import streamlit as st

from ui import explorer
from ui.auth import require_access
from ui.state import user_errors

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/scatter_plot: Explorer")
with user_errors():
    view = explorer.choose_view()
    if view is not None:
        explorer.show_view(view)
