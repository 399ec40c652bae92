"""Page not found: where the server sends a browser that asked for an address naming no page (``ui.server``), with
the address asked for and a link to every page. A file of its own under pages/ (not a function page) because on a
fresh server Streamlit resolves the first visit's address against the files of pages/, before ``st.navigation``
has run: an address with no file there opened Home under Streamlit's "page not found" notice.
"""

import streamlit as st

from ui.auth import require_access
from ui.navigation import not_found_page

require_access()  # first: no Streamlit mode runs this page past the access gate

not_found_page(st.query_params.get("address", ""))
