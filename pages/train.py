"""Train: choose dataset, split, backbones and how to evaluate them (protocols, the reference MLP preselected;
feature variants, shots, seeds), launch it, and watch every job live.

The comparison runs in core's job runner (one worker thread per server, jobs queue), never in this
script's thread, so the page stays responsive and teammates' pages keep working. Job state lives in
the runner, not in the browser session: refreshing or closing the tab loses nothing. The parts live
in ``ui.train``.
"""

import streamlit as st

from ui.auth import require_access
from ui.train import form, job_list, launch_section, unfinished_runs

require_access()  # first: no Streamlit mode runs this page past the access gate

st.title(":material/model_training: Train")
choice = form()
launch_section(choice)
st.subheader("Jobs")
job_list()
unfinished_runs()
