"""Flower Probe: the entry file. `streamlit run dashboard.py`; the pages live in pages/
(each enforces the access gate itself too).

Streamlit runs this file in two ways. Per visit, as ``__main__``: the access gate, then navigation over pages/.
At start, ``streamlit run`` finds the ``st.App`` below and serves it (imported as a module): Streamlit's own
server plus one middleware, which sends a browser asking for an address that names no page to the app's
"page not found" page (ui.server, ui.navigation).
"""

from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from ui.server import UnknownAddressToNotFound, freeze_imported_objects


def main() -> None:
    """One visit's script run: the gate, the menu, then the page asked for."""
    # Imported here, not at the top: the server imports this file before Streamlit's runtime exists, and loading
    # these modules then set up their st.cache_* stores outside it ("No runtime found, using
    # MemoryCacheStorageManager", once per cached function).
    from ui.auth import require_access
    from ui.jobs import sidebar
    from ui.navigation import app_pages, page_menu

    # A committed PNG, served by this server: a ":material/..." page icon makes the browser fetch it from Google's CDN.
    st.set_page_config(
        page_title="Flower Probe", page_icon=str(Path(__file__).parent / "ui" / "assets" / "favicon.png"), layout="wide"
    )
    freeze_imported_objects()  # keeps the garbage collector's full passes off every run (ui.server)
    require_access(entry_file=True)  # before navigation: a visitor without access gets only the login form
    menu, not_found = app_pages()  # the pages of ui.navigation.PAGES, and where unknown addresses are sent
    navigation = st.navigation([*menu, not_found])
    page_menu(menu)  # Streamlit's own menu is off (.streamlit/config.toml): it listed raw file names before this ran
    sidebar()
    navigation.run()


if __name__ == "__main__":
    main()
else:
    app = st.App(__file__, middleware=[Middleware(UnknownAddressToNotFound)])
