"""Small widgets of our own: photo grids and bar tables (HTML, every cell escaped text), and what several pages draw
alike (the dataset of some runs, the map method, why there is nothing to show yet)."""

from __future__ import annotations

import base64

import pandas as pd
import streamlit as st

from core.base.text import html_text
from core.maps.projection import MAP_METHODS
from ui.labels import dataset_label
from ui.state import thumbnail

_PHOTO_GRID_STYLE = {
    "grid": "display:flex;flex-wrap:wrap;gap:10px 8px;margin-bottom:0.5rem",
    "figure": "margin:0;width:{px}px",
    "img": "display:block;width:{px}px;height:{px}px;object-fit:contain;border-radius:4px",
    "caption": "font-size:0.75rem;line-height:1.25;opacity:0.7;overflow-wrap:anywhere;margin-top:2px",
}


def photo_grid_html(photos: list[tuple[bytes, str]], *, size: int) -> str:
    """The HTML of a gallery: each (JPEG bytes, caption) as a photo with its caption (plain text, lines kept)."""
    style = {part: rule.format(px=int(size)) for part, rule in _PHOTO_GRID_STYLE.items()}
    cells = []
    for data, caption in photos:
        text = "<br>".join(html_text(line) for line in str(caption).split("\n"))
        cells.append(
            f'<figure style="{style["figure"]}"><img alt="" style="{style["img"]}" '
            f'src="data:image/jpeg;base64,{base64.b64encode(data).decode("ascii")}">'
            f'<figcaption style="{style["caption"]}">{text}</figcaption></figure>'
        )
    return f'<div data-testid="photo-grid" style="{style["grid"]}">{"".join(cells)}</div>'


# Counts as bars inside an HTML table rather than st.dataframe's ProgressColumn: the page then loads none of the data
# grid's scripts (Apache Arrow, glide-data-grid), which cost the Dataset page 0.1-0.35 s of its ~1.4 s in a new
# Chromium tab on an idle 2-core machine (python -m bench --only browser). A long table scrolls under its header.
_BAR_TABLE_STYLE = {
    "wrap": "max-height:{height}px;overflow-y:auto;margin-bottom:1rem",
    "table": "border-collapse:collapse;width:100%;font-size:0.875rem",
    "th": "position:sticky;top:0;background:{background};text-align:left;padding:4px 8px;"
    "border-bottom:1px solid rgba(128,128,128,0.35);font-weight:600",
    "td": "padding:3px 8px;border-bottom:1px solid rgba(128,128,128,0.12);overflow-wrap:anywhere",
    "bar": "display:flex;align-items:center;gap:8px",
    "number": "min-width:3.5ch;text-align:right;font-variant-numeric:tabular-nums",
    "track": "flex:1;min-width:40px;height:10px;border-radius:2px;background:rgba(128,128,128,0.12)",
    "fill": "height:10px;border-radius:2px;background:{colour}",
}
BAR_TABLE_HEIGHT_PX = 440  # ~17 rows: Oxford 17 whole; more classes scroll


def bar_table_html(table: pd.DataFrame, *, bars: list[str], largest: float, colour: str, background: str) -> str:
    """``table`` as HTML (every cell escaped text); each column in ``bars`` shows its number beside a bar of
    ``number / largest`` of the cell's width."""
    style = {
        part: rule.format(height=BAR_TABLE_HEIGHT_PX, colour=colour, background=background)
        for part, rule in _BAR_TABLE_STYLE.items()
    }
    head = "".join(f'<th style="{style["th"]}">{html_text(name)}</th>' for name in table.columns)
    rows = []
    for record in table.itertuples(index=False):
        cells = []
        for name, value in zip(table.columns, record):
            if name in bars:
                share = 100 * min(1.0, max(0.0, float(value) / largest)) if largest > 0 else 0.0
                value_html = (
                    f'<div style="{style["bar"]}"><span style="{style["number"]}">{html_text(value)}</span>'
                    f'<div style="{style["track"]}"><div style="{style["fill"]};width:{share:.1f}%"></div></div></div>'
                )
            else:
                value_html = html_text(value)
            cells.append(f'<td style="{style["td"]}">{value_html}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div data-testid="bar-table" style="{style["wrap"]}"><table style="{style["table"]}">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def bar_table(table: pd.DataFrame, *, bars: list[str], largest: float) -> None:
    """Show ``table`` with bars in its ``bars`` columns (``bar_table_html``), in the theme's colours."""
    st.html(
        bar_table_html(
            table,
            bars=bars,
            largest=largest,
            colour=st.get_option("theme.primaryColor") or "#7b3fa0",
            background=st.get_option("theme.backgroundColor") or "#ffffff",
        )
    )


def photo_grid(paths, captions, *, size: int = 96, container=None) -> list[str]:
    """Thumbnails of ``paths`` captioned by ``captions`` (plain text; ``\\n`` starts a line), in ``container``.

    A file that cannot be read shows the placeholder and " (unreadable)" after its caption. Returns those files.
    """
    photos, unreadable = [], []
    for path, caption in zip(paths, captions, strict=True):
        data, ok = thumbnail(path, size=size)
        photos.append((data, caption if ok else f"{caption} (unreadable)"))
        if not ok:
            unreadable.append(str(path))
    if photos:
        (container or st).html(photo_grid_html(photos, size=size))
    return unreadable


def nothing_to_show(text: str, *links: tuple[str, str, str]) -> None:
    """Why a page has nothing to show yet (``text``, plain), then a link to each page that would change that: each of
    ``links`` is (page script, label, icon)."""
    st.info(text, icon=":material/info:")
    for page, label, icon in links:
        st.page_link(page, label=label, icon=icon)


def choose_dataset(runs: list[dict], *, key: str) -> tuple[str, bool]:
    """A picker of the datasets ``runs`` (newest first) were trained on, the newest run's first; the address's
    ``?dataset=<key>`` preselects one. Returns the chosen dataset key, and whether the address chose it."""
    datasets: dict[str, str] = {}
    for run in runs:  # newest first, so the default dataset is that of the newest run
        datasets.setdefault(run["dataset_key"], dataset_label(run["dataset_name"], run["synthetic"]))
    requested = st.query_params.get("dataset")
    dataset_key = st.selectbox(
        "Dataset",
        list(datasets),
        index=list(datasets).index(requested) if requested in datasets else 0,
        format_func=datasets.get,
        key=key,
    )
    return dataset_key, requested == dataset_key


def linked_run_ids() -> list[int]:
    """Run ids from the address's ``?runs=3,5,8`` (anything else in it ignored)."""
    return [int(part) for part in st.query_params.get("runs", "").split(",") if part.strip().isdigit()]


def choose_map_method(container, *, key: str, help: str) -> str:
    """The map method (a key of ``MAP_METHODS``: t-SNE, UMAP or PCA), as a row of radio buttons in ``container``."""
    return container.radio("Map", list(MAP_METHODS), format_func=MAP_METHODS.get, horizontal=True, key=key, help=help)
