"""What AppTest sees of ``ui.widgets.photo_grid`` galleries (``st.html`` elements): captions as shown, and markup.

A gallery's body must hold only the markup ``photo_grid_html`` writes (a div of figures, each a data-URL JPEG and a
caption of escaped text): ``check_markup`` parses it and fails on any other tag, attribute or image source, which is
how a class or file name that reached the HTML unescaped would show.
"""

from __future__ import annotations

from html.parser import HTMLParser

MARKER = 'data-testid="photo-grid"'
_ALLOWED = {"div": {"data-testid", "style"}, "figure": {"style"}, "img": {"alt", "style", "src"}}
_ALLOWED |= {"figcaption": {"style"}, "br": set()}


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.captions: list[str] = []
        self._caption: list[str] | None = None

    def handle_starttag(self, tag, attrs) -> None:
        names = {name for name, _ in attrs}
        assert tag in _ALLOWED and names <= _ALLOWED[tag], f"unexpected markup in a photo grid: <{tag} {attrs}>"
        if tag == "img":
            assert dict(attrs)["src"].startswith("data:image/jpeg;base64,"), "a photo grid image is not a data URL"
        if tag == "figcaption":
            self._caption = []
        if tag == "br" and self._caption is not None:
            self._caption.append("\n")

    def handle_endtag(self, tag) -> None:
        if tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption))
            self._caption = None

    def handle_data(self, data) -> None:
        if self._caption is not None:
            self._caption.append(data)


def bodies(at) -> list[str]:
    """The HTML of every photo grid on the page, in order."""
    return [element.proto.body for element in at.get("html") if MARKER in element.proto.body]


def check_markup(body: str) -> list[str]:
    """Parse one grid's HTML, failing on markup ``photo_grid_html`` does not write; returns its captions as shown."""
    parser = _Markup()
    parser.feed(body)
    parser.close()
    return parser.captions


def photo_grids(at) -> list[list[str]]:
    """Every photo grid on the page as its captions, as a reader sees them (entities decoded, lines kept)."""
    return [check_markup(body) for body in bodies(at)]
