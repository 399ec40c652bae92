"""Flower Probe: the entry file. `streamlit run dashboard.py`; the pages live in pages/
(each enforces the access gate itself too)."""

from pathlib import Path

import streamlit as st

from ui.auth import require_access
from ui.jobs import sidebar
from ui.navigation import not_found_page, page_menu, requested_unknown_path
from ui.server import freeze_imported_objects

# A committed PNG, served by this server: a ":material/..." page icon makes the browser fetch it from Google's CDN.
st.set_page_config(
    page_title="Flower Probe", page_icon=str(Path(__file__).parent / "ui" / "assets" / "favicon.png"), layout="wide"
)
freeze_imported_objects()  # keeps the garbage collector's full passes off every run (ui.server)
require_access(entry_file=True)  # before navigation: a visitor without access gets only the login form
pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/explorer.py", title="Explorer", icon=":material/scatter_plot:"),
    st.Page("pages/classify.py", title="Classify", icon=":material/image_search:"),
    st.Page("pages/health.py", title="Health", icon=":material/health_and_safety:"),
    st.Page("pages/patches.py", title="Patches", icon=":material/grid_on:"),
]
navigation = st.navigation(pages)
page_menu(pages)  # Streamlit's own menu is off (.streamlit/config.toml): it listed raw file names before this ran
sidebar()
unknown = requested_unknown_path(pages, url=st.context.url, base_path=st.get_option("server.baseUrlPath"))
if unknown is not None:
    not_found_page(unknown, pages)
else:
    navigation.run()
