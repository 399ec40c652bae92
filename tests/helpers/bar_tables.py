"""What AppTest sees of ``ui.widgets.bar_table`` tables (``st.html`` elements): their cells as shown, and markup.

A table's body must hold only the markup ``bar_table_html`` writes (a div holding a table of header and data
cells, bars as empty divs, numbers in spans): ``check_markup`` parses it and fails on any other tag or attribute,
which is how a class name that reached the HTML unescaped would show.
"""

from __future__ import annotations

from html.parser import HTMLParser

MARKER = 'data-testid="bar-table"'
_ALLOWED = {"div": {"data-testid", "style"}, "span": {"style"}}
_ALLOWED |= {tag: {"style"} for tag in ("table", "th", "td")} | {tag: set() for tag in ("thead", "tbody", "tr")}


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        names = {name for name, _ in attrs}
        assert tag in _ALLOWED and names <= _ALLOWED[tag], f"unexpected markup in a bar table: <{tag} {attrs}>"
        if tag == "tr":
            self.rows.append([])
        if tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag) -> None:
        if tag in ("th", "td") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell.append(data)


def check_markup(body: str) -> list[list[str]]:
    """Parse one table's HTML, failing on markup ``bar_table_html`` does not write; its rows (header first) as
    shown."""
    parser = _Markup()
    parser.feed(body)
    parser.close()
    return parser.rows


def bar_tables(at) -> list[list[list[str]]]:
    """Every bar table on the page as rows of cell texts (entities decoded), header row first."""
    return [check_markup(element.proto.body) for element in at.get("html") if MARKER in element.proto.body]
