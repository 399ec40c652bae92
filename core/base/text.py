"""The one escaping path for user-controlled text (class, file, dataset and run names) shown on a page.

Names are text, never markup: every page, chart and component passes such strings through one of
these two functions before Streamlit's Markdown or an HTML/Plotly label sees them.

- ``markdown_text``: for ``st.markdown``, captions, alerts and any Streamlit string that parses Markdown.
- ``html_text``: for HTML (custom components) and Plotly labels, titles, legends and hover text, which
  Plotly parses as a subset of HTML. Quotes are left alone (``quote=False``): Plotly shows ``&quot;``
  literally, and no attribute value is ever built from these strings.
"""

from __future__ import annotations

import html
import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping them all leaves no
# emphasis, link, HTML tag, table, LaTeX or Streamlit directive (":red[...]") to interpret.
_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")


def markdown_text(value: object) -> str:
    """``value`` escaped for Streamlit Markdown, so it shows literally; newlines stay line breaks."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(value)).replace("\n", "  \n")


def html_text(value: object) -> str:
    """``value`` with ``&``, ``<`` and ``>`` as entities: literal text in HTML and in Plotly labels."""
    return html.escape(str(value), quote=False)
