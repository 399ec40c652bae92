"""Train: choose dataset, split, backbones and head settings, launch a comparison, and watch every job live.

The comparison runs in core's job runner (one worker thread per server, jobs queue), never in this
script's thread, so the page stays responsive and teammates' pages keep working. Job state lives in
the runner, not in the browser session: refreshing or closing the tab loses nothing. The parts live
in ``ui.train``.
"""

import streamlit as st

from ui.auth import require_access
from ui.probe_form import probe_section
from ui.train import form, job_list, launch_section, unfinished_runs

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/model_training: Train")
st.caption(
    "Frozen backbone → cached features → a small head trained on them → test accuracy. Each backbone is one run."
)
choice = form()
launch_section(choice)
probe_section(choice)
st.subheader("Jobs")
job_list()
unfinished_runs()
