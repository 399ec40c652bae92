"""Scatter panels whose points show their photo on hover: a Streamlit custom component drawn by plotly.js.

Why a custom component: Plotly hover labels cannot show images and Streamlit gives Python no hover
events, so the figure is drawn in the browser and hover is handled there, with no server round trip.
plotly.js draws the maps (its gl2d bundle, ``frontend/plotly-gl2d.min.js``: scatter and scattergl only, 1.6 MB
against the full bundle's 4.8 MB, MIT licence beside it, served by this dashboard's own server, never a CDN; SVG
traces below ``WEBGL_FROM`` points, WebGL from there): markers,
zoom, pan, box and lasso selection, the legend, the colour bar, and its own ``selected``/``unselected`` marker
styles that grey what a box or lasso leaves out (in every panel, not only the one drawn on).
``frontend/hover_scatter.js`` adds the photo tooltip, a ring on the hovered photo in every panel, one legend and one
set of tools for all panels, and, from ``GRID_HOVER_FROM`` points, hover and click found through a grid index over
the data rather than Plotly's hover, which visits every point on each mouse move (``python -m bench --only maps``
measures both at 100,000 points). The bundle loads ``async``, once per map frame (the browser caches it), so the
titles and tools paint while it evaluates.

Clicks and box/lasso selections come back to Python as plain ``{event, rows, seq}`` messages
(``event_from_value``); the rows the page passes back as ``selected_rows`` are ringed in every panel (a click) or,
with ``dim_unselected``, drawn in Plotly's selected style with the rest greyed (a box or lasso).

Why Streamlit's v1 component API (``declare_component(path=...)``): its static folder is served
over HTTP, so the bundle and the thumbnail sheets are ordinary files the browser
fetches once per page load (gzip-compressed, ``Cache-Control: public``), never re-sent with the
data. The v2 API (``st.components.v2.component``) serves files only from an ``asset_dir`` declared
in the ``pyproject.toml`` of an *installed* package; this repository is run from a checkout, so v2
could only inline the script into every rerun.

Served folder: ``<workspace>/thumbnails/hover_scatter/`` holds the served page, a copy of the plotly.js bundle
(Streamlit refuses symlinks that leave the folder) and ``sprites/<key>/`` with the sheets from
``core.maps.thumbnails.build_sprite_sheets``.

Payload design (numbers measured with ``tests/ui/test_hover_scatter.py`` and a real browser):

- Data (positions, row ids, texts) travels as the component's JSON arguments: ~75 bytes a point
  for two panels (0.1 MB at 1,360 points, 1.5 MB at 20,000). Streamlit sends an unchanged element
  (same JSON) as a hash reference on later reruns, and the frontend skips redrawing when the
  digest is unchanged, so zoom, hidden classes and loaded sheets survive reruns.
- The selection (``selected_rows``, a few bytes a row) is an argument of its own, outside the spec
  and its digest: a new selection restyles the panels (Plotly.restyle), keeping zoom. Streamlit
  sends a component's arguments as one element, so a rerun whose selection changed re-sends the
  spec too (0.1 MB at 1,360 points); an unchanged selection costs nothing.
- Thumbnails are WebP sprite sheets of 16 x 16 cells (96 px cells up to 4,096 images, 64 px
  above), fetched as files, never inlined: ~1.8 kB a photo at 96 px, ~0.9 kB at 64 px. Sheets
  are prefetched in order, four at a time, until ``DEFAULT_PREFETCH_BYTES`` (8 MB) is spent; the rest load when a
  point on them is first hovered (the text shows at once, the photo as soon as its sheet arrives).
- Uploaded images (not in any sheet) travel inline as small data URLs (``ThumbnailSource.with_images``).
- From ``BACKGROUND_FROM`` (20,000) images the map does not wait for the sheets: ``planned_thumbnails``
  gives their names and layout at once, a job builds them, and the browser fetches a hovered point's
  sheet when first needed (asking again every few seconds while it is not written yet).
- A trace may carry per-point ``values`` (scores, e.g. neighbour agreement) coloured on the panel's ``ColourBar``
  (Plotly's colour scale and colour bar).

Browser tests: the component is an iframe titled ``FRAME_TITLE``. Inside it ``window.hoverScatter``
offers ``ready`` (true once all panels are drawn), ``pointClientPosition(panel, row)`` (the row's
point in iframe viewport pixels, or null when hidden or zoomed out), ``tooltip()`` (visible, row,
className, fileName, prediction, verdict, split, thumbState "ok"/"loading"/..., box), ``rings()``,
``selectedMarks()`` (per panel, ``{row, x, y}`` of each selected row), ``selection(panel)`` (the rows Plotly
draws selected and those it greys, read from the plot's own ``selectedpoints``), ``sheetStates()``,
``rows(panel)``, ``isolatedRows(panel, px=8)`` (rows with no other visible point within ``px``), ``view(panel)``
(the data range shown, ``{x0, x1, y0, y1}``), ``hidden()`` (legend names toggled off), ``legendNames()``,
``mode`` ("zoom", "pan", "select" or "lasso": what a drag does), ``renderer``, ``latencies()`` (per hover: handler
time and input-event-to-tooltip time in ms) and ``drawTimes()``. To hover row 7 of the first panel with
Playwright (take 7 from ``isolatedRows(0)`` when points crowd)::

    inner = next(f for f in page.frames if f"/component/{FRAME_TITLE}/" in f.url)
    inner.wait_for_function("window.hoverScatter && window.hoverScatter.ready")
    point = inner.evaluate("hoverScatter.pointClientPosition(0, 7)")
    box = page.locator(f'iframe[title="{FRAME_TITLE}"]').bounding_box()
    page.mouse.move(box["x"] + point["x"], box["y"] + point["y"])
    inner.wait_for_function("hoverScatter.tooltip().row === 7")
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from core.base.fileio import atomic_write_bytes
from core.base.progress import ProgressCallback
from core.base.workspace import Workspace
from core.maps.thumbnails import SpriteSheets, build_sprite_sheets, planned_sprite_sheets, thumbnail_data_url

# declare_component prefixes the calling module, and the iframe's title is that full name.
_COMPONENT_NAME = "hover_scatter"
FRAME_TITLE = f"{__name__}.{_COMPONENT_NAME}"

_FRONTEND = Path(__file__).parent / "frontend"
# The page the component serves is index.html with the stylesheet and the script written into it: one request for
# the iframe instead of three, ~50 ms sooner to a drawn map in a new tab (the iframe shares the page's busy main
# thread, and each extra request waited its turn there). The repository keeps them apart, to be read and tested.
_SOURCES = ("index.html", "hover_scatter.css", "hover_scatter.js")
# plotly.js's gl2d bundle (scatter + scattergl), served as its own file so the browser caches it (and its compiled
# code) across page loads; copied into the served folder beside the page.
PLOTLY_BUNDLE = "plotly-gl2d.min.js"
_STYLESHEET_TAG = '<link rel="stylesheet" href="hover_scatter.css">'
_SCRIPT_TAG = '<script src="hover_scatter.js" defer></script>'
_WEB_FOLDER = "hover_scatter"
_SPRITES_FOLDER = "sprites"

# 96 px photos are recognisable in a tooltip; above 4,096 images 64 px cells keep the sheets
# (~1.9x fewer bytes) cheap to fetch on hover.
_LARGE_THUMB_PX, _SMALL_THUMB_PX, _SMALL_FROM = 96, 64, 4_097
# 16 x 16 cells: a sheet is 1,536 px (96 px cells) or 1,024 px, a few hundred kB, so a lazily
# loaded sheet arrives within a frame or two on a local network.
_SHEET_COLUMNS = 16
# Prefetch sheets up to 8 MB: all of Oxford 17 (1,360 images) and small folders, but not 20,000.
DEFAULT_PREFETCH_BYTES = 8_000_000
# From this many images the sheets are built in the background while the map already shows
# (``planned_thumbnails``): 20,000 thumbnails take minutes on 2 cores, and the map should not wait.
BACKGROUND_FROM = 20_000
# Measured sheet sizes (module docstring): ~0.9 kB a 64 px photo, ~1.8 kB at 96 px, i.e. ~0.2 byte a pixel.
_WEBP_BYTES_PER_PIXEL = 0.22
# Coordinates are rounded to a 10,000th of their panel's span, a tenth of a pixel on a 1,000-px map, whatever the
# map's units: a t-SNE spans ~100, the PCA of random-weight features ~0.001 (a fixed two decimals made that one
# point at the origin).
_COORDINATE_STEPS = 10_000
# Plotly's colour scales a ColourBar may name: perceptually uniform and readable by colour-blind users.
COLOUR_SCALES = ("Viridis", "Cividis")
# From this many points (all panels together) the frontend finds the hovered point through its grid index instead of
# Plotly's hover, which visits every point of every trace on each mouse move and answers at most every 50 ms
# (plotly.js's HOVERMINTIME). bench/maps.py at 100,000 points (headless Chromium, load average 22-24): Plotly's hover
# median 8.5 ms / p95 25 ms from mousemove to tooltip, the grid 2.6 / 10 ms. Both meet the 50 ms goal there; the grid
# keeps big maps' hover at a third of the cost, and small maps keep Plotly's own.
GRID_HOVER_FROM = 20_000
# From this many points (all panels) the traces are WebGL (scattergl); below, SVG (scatter). Two 1,360-point maps in
# headless Chromium (WebGL in software, SwiftShader; machine at load 40): SVG ready in 2.2-3.5 s, WebGL 3.7-4.6 s (each
# WebGL plot sets up its context and shaders); SVG grows with every point drawn, so big maps are WebGL.
WEBGL_FROM = 10_000


@dataclass(frozen=True)
class Trace:
    """One legend entry of a panel: a class, or the highlighted uploads.

    ``x``, ``y``, ``rows`` and ``correct`` have one entry per point. ``rows`` are global row ids:
    indices into ``HoverText`` and into the thumbnails, the same row in every panel.
    """

    name: str
    x: Sequence[float]
    y: Sequence[float]
    rows: Sequence[int]
    colour: str  # any CSS colour; give a class the same colour in every panel
    correct: Sequence[bool] | None = None  # circle when True, x when False; None: all circles
    highlight: bool = False  # large outlined stars (uploaded images)
    values: Sequence[float] | None = None  # per point: coloured on the panel's ColourBar instead of ``colour``


@dataclass(frozen=True)
class ColourBar:
    """The colour scale of traces that carry ``values`` (per-image scores), drawn beside the last panel."""

    title: str
    low: float
    high: float
    scale: str = "Viridis"  # perceptually uniform and readable by colour-blind users; one of COLOUR_SCALES


@dataclass(frozen=True)
class Panel:
    title: str
    traces: Sequence[Trace]
    colour_bar: ColourBar | None = None  # required when a trace has ``values``


@dataclass(frozen=True)
class HoverText:
    """Tooltip text per row (all shown as plain text, never as HTML)."""

    class_names: Sequence[str]
    file_names: Sequence[str]
    predictions: Sequence[str | None] | None = None  # None: no run chosen; an entry None: not predicted
    verdicts: Sequence[str | None] | None = None  # per row "right", "wrong" (or per run when runs differ); None: none
    splits: Sequence[str | None] | None = None  # per row its part of the split ("train", "val", "test"); None: none


@dataclass(frozen=True)
class ThumbnailSource:
    """Where the browser finds each row's photo: a sprite sheet cell or an inline data URL.

    Build it with ``prepare_thumbnails``; rows ``0 .. sheets.n_images - 1`` are the images given there.
    """

    web_root: Path
    sheets: SpriteSheets | None
    inline: Mapping[int, str] = field(default_factory=dict)  # row -> data URL

    def with_images(self, images: Mapping[int, Image.Image]) -> ThumbnailSource:
        """A copy that also shows ``images`` (row -> PIL image), e.g. uploads placed on the map."""
        thumb_px = self.sheets.thumb_px if self.sheets else _LARGE_THUMB_PX
        inline = dict(self.inline)
        inline.update({int(row): thumbnail_data_url(image, size=thumb_px) for row, image in images.items()})
        return replace(self, inline=inline)


def web_root(workspace: Workspace) -> Path:
    """The folder Streamlit serves to the component: frontend files and sprite sheets."""
    return workspace.thumbnails_dir / _WEB_FOLDER


def prepare_thumbnails(
    paths: Sequence[str | os.PathLike],
    *,
    workspace: Workspace | None = None,
    thumb_px: int | None = None,
    progress: ProgressCallback | None = None,
) -> ThumbnailSource:
    """Build (or reuse) the sprite sheets for ``paths`` in the workspace; row ``i`` is ``paths[i]``.

    Parameters
    ----------
    paths : sequence of path-like, length n_images
    workspace : Workspace or None
        Defaults to ``Workspace.from_env()``.
    thumb_px : int or None
        Cell size; default 96 px up to 4,096 images and 64 px above.
    progress : ProgressCallback or None
        Receives ``"thumbnails"`` events.
    """
    workspace = workspace or Workspace.from_env()
    root = web_root(workspace)
    if thumb_px is None:
        thumb_px = _SMALL_THUMB_PX if len(paths) >= _SMALL_FROM else _LARGE_THUMB_PX
    sheets = build_sprite_sheets(
        paths, out_dir=root / _SPRITES_FOLDER, thumb_px=thumb_px, columns=_SHEET_COLUMNS, progress=progress
    )
    return ThumbnailSource(web_root=root, sheets=sheets)


def planned_thumbnails(
    paths: Sequence[str | os.PathLike],
    *,
    workspace: Workspace | None = None,
) -> tuple[ThumbnailSource, bool]:
    """Where ``prepare_thumbnails`` puts each photo, without building anything; and whether it is all built.

    For big datasets (``BACKGROUND_FROM`` images and more) the page draws the map at once from this and
    builds the sheets in the background (``prepare_thumbnails`` in a job): the browser fetches the sheet
    of a hovered point when it is first needed, and asks again a few seconds later while it is not
    built yet. The layout and the estimated sheet sizes do not change when the sheets appear, so the
    map is not redrawn.
    """
    workspace = workspace or Workspace.from_env()
    root = web_root(workspace)
    thumb_px = _SMALL_THUMB_PX if len(paths) >= _SMALL_FROM else _LARGE_THUMB_PX
    sheets, ready = planned_sprite_sheets(
        paths,
        out_dir=root / _SPRITES_FOLDER,
        thumb_px=thumb_px,
        columns=_SHEET_COLUMNS,
        bytes_per_pixel=_WEBP_BYTES_PER_PIXEL,
    )
    return ThumbnailSource(web_root=root, sheets=sheets), ready


def _coordinate_decimals(panel: Panel) -> int:
    """Decimals that keep ``_COORDINATE_STEPS`` distinct steps across the panel's largest extent (x or y)."""
    spans = [
        float(np.ptp(np.asarray(values, dtype=np.float64)))
        for trace in panel.traces
        for values in (trace.x, trace.y)
        if len(values) and np.isfinite(values).all()
    ]
    span = max(spans, default=0.0)
    return max(0, math.ceil(-math.log10(span / _COORDINATE_STEPS))) if span > 0 else 0


def _coordinates(values: Sequence[float], *, name: str, decimals: int) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ValueError(f"{name} must be a 1-D sequence of finite numbers; got shape {array.shape}.")
    return np.round(array, decimals).tolist()


def _trace_spec(trace: Trace, *, n_rows: int, where: str, decimals: int) -> dict:
    rows = np.asarray(trace.rows, dtype=np.int64).reshape(-1)
    x = _coordinates(trace.x, name=f"{where}.x", decimals=decimals)
    y = _coordinates(trace.y, name=f"{where}.y", decimals=decimals)
    lengths = {len(x), len(y), len(rows)} | ({len(trace.correct)} if trace.correct is not None else set())
    lengths |= {len(trace.values)} if trace.values is not None else set()
    if len(lengths) != 1:
        raise ValueError(f"{where}: x, y, rows (and correct) must have the same length; got lengths {sorted(lengths)}.")
    if len(rows) and (rows.min() < 0 or rows.max() >= n_rows):
        raise ValueError(
            f"{where}.rows must be in [0, {n_rows}) (one HoverText entry per row); got {rows.min()}..{rows.max()}."
        )
    return {
        "name": str(trace.name),
        "colour": str(trace.colour),
        "x": x,
        "y": y,
        "rows": rows.tolist(),
        # 0/1 rather than false/true: 3 bytes less per point in the JSON
        "correct": [int(bool(ok)) for ok in trace.correct] if trace.correct is not None else None,
        "highlight": bool(trace.highlight),
        "values": None if trace.values is None else _coordinates(trace.values, name=f"{where}.values", decimals=4),
    }


def _colour_bar_spec(panel: Panel, *, where: str) -> dict | None:
    bar = panel.colour_bar
    if bar is None:
        if any(trace.values is not None for trace in panel.traces):
            raise ValueError(f"{where}: a trace has values, so the panel needs a colour_bar.")
        return None
    if bar.scale not in COLOUR_SCALES:
        raise ValueError(f"{where}.colour_bar.scale must be one of {list(COLOUR_SCALES)}; got {bar.scale!r}.")
    if not (np.isfinite([bar.low, bar.high]).all() and bar.low <= bar.high):
        raise ValueError(
            f"{where}.colour_bar: low and high must be finite with low <= high; got {bar.low}, {bar.high}."
        )
    return {"title": str(bar.title), "low": float(bar.low), "high": float(bar.high), "scale": str(bar.scale)}


def _text_spec(hover_text: HoverText) -> dict:
    """Per-row texts with class, prediction, verdict and split names stored once each (they repeat thousands of
    times); -1 where a row has none."""
    n_rows = len(hover_text.class_names)
    optional = {"predictions": hover_text.predictions, "verdicts": hover_text.verdicts, "splits": hover_text.splits}
    if len(hover_text.file_names) != n_rows or any(v is not None and len(v) != n_rows for v in optional.values()):
        raise ValueError(
            "HoverText: class_names, file_names, predictions, verdicts and splits must have one entry per row."
        )
    strings: dict[str, int] = {}
    classes = [strings.setdefault(str(name), len(strings)) for name in hover_text.class_names]

    def indices(values):
        if values is None:
            return None
        return [-1 if value is None else strings.setdefault(str(value), len(strings)) for value in values]

    predictions, verdicts, splits = (indices(values) for values in optional.values())
    return {
        "strings": list(strings),  # after every name above was added
        "cls": classes,
        "file": [str(name) for name in hover_text.file_names],
        "pred": predictions,
        "verdict": verdicts,
        "split": splits,
    }


def _thumbs_spec(thumbnails: ThumbnailSource, *, prefetch_bytes: int) -> dict:
    sheets = thumbnails.sheets
    return {
        "base": f"{_SPRITES_FOLDER}/{sheets.key}/" if sheets else "",
        "px": sheets.thumb_px if sheets else _LARGE_THUMB_PX,
        "columns": sheets.columns if sheets else 1,
        "perSheet": sheets.per_sheet if sheets else 1,
        "n": sheets.n_images if sheets else 0,
        "sheets": list(sheets.sheet_files) if sheets else [],
        "bytes": list(sheets.sheet_bytes) if sheets else [],
        "prefetchBytes": int(prefetch_bytes),
        "inline": {str(row): url for row, url in sorted(thumbnails.inline.items())},
    }


def build_spec(
    panels: Sequence[Panel],
    *,
    hover_text: HoverText,
    thumbnails: ThumbnailSource,
    height: int = 560,
    prefetch_bytes: int = DEFAULT_PREFETCH_BYTES,
    grid_hover_from: int = GRID_HOVER_FROM,
    webgl_from: int = WEBGL_FROM,
) -> dict:
    """The JSON-ready description the frontend draws (pure; ``hover_scatter`` sends it).

    ``grid_hover_from``: from this many points (all panels) hover uses the frontend's grid index, not Plotly's.
    Raises ``ValueError`` naming the panel and trace when lengths or row ids do not match.
    """
    if not panels:
        raise ValueError("panels must hold at least one Panel; got none.")
    if not 200 <= height <= 2000:
        raise ValueError(f"height must be from 200 to 2000 pixels; got {height}.")
    n_rows = len(hover_text.class_names)
    return {
        "height": int(height),
        "gridHoverFrom": int(grid_hover_from),
        "webglFrom": int(webgl_from),
        "panels": [
            {
                "title": str(panel.title),
                "colourBar": _colour_bar_spec(panel, where=f"panels[{p}]"),
                "traces": [
                    _trace_spec(
                        trace, n_rows=n_rows, where=f"panels[{p}].traces[{t}]", decimals=_coordinate_decimals(panel)
                    )
                    for t, trace in enumerate(panel.traces)
                ],
            }
            for p, panel in enumerate(panels)
        ],
        "text": _text_spec(hover_text),
        "thumbs": _thumbs_spec(thumbnails, prefetch_bytes=prefetch_bytes),
    }


def spec_digest(spec: dict) -> str:
    """Content hash of a spec: the frontend redraws only when it changes."""
    return hashlib.sha256(json.dumps(spec, separators=(",", ":"), sort_keys=True).encode()).hexdigest()[:32]


def selected_spec(spec: dict, selected_rows: Sequence[int]) -> list[int]:
    """``selected_rows`` as sent to the frontend: ascending, each once.

    Raises ``ValueError`` naming the rows that are on no panel of ``spec`` (``build_spec``'s output).
    """
    rows = np.unique(np.asarray(selected_rows, dtype=np.int64).reshape(-1))
    on_panels = [trace["rows"] for panel in spec["panels"] for trace in panel["traces"]]
    unknown = np.setdiff1d(rows, np.concatenate(on_panels)) if on_panels else rows
    if len(unknown):
        raise ValueError(
            f"selected_rows must be row ids shown on the panels; got {len(unknown)} that are not, "
            f"e.g. {unknown[:5].tolist()}."
        )
    return rows.tolist()


EVENTS = ("hover", "click", "select")


def event_from_value(value: dict | None) -> dict | None:
    """The component's raw value ``{"event": "hover" | "click" | "select", "rows": [row ids], "seq": int}``,
    checked: ``{"event", "rows", "seq"}`` with rows as Python ints, first-seen order, each once; None before any.

    ``seq`` changes with every user action; the value persists across reruns, so a page that
    acts on an event should remember the last ``seq`` it handled. A value of another shape (an old frontend
    still open in a tab) raises ``ValueError`` naming what was wrong.
    """
    if not value:
        return None
    if not isinstance(value, Mapping) or value.get("event") not in EVENTS:
        raise ValueError(f"event must be one of {list(EVENTS)}; got {value!r:.200}.")
    rows = value.get("rows")
    if not isinstance(rows, list) or not all(isinstance(row, int) and not isinstance(row, bool) for row in rows):
        raise ValueError(f"rows must be a list of integer row ids; got {rows!r:.200}.")
    return {"event": value["event"], "rows": list(dict.fromkeys(rows)), "seq": value.get("seq")}


def served_page() -> str:
    """``frontend/index.html`` with ``hover_scatter.css`` and ``hover_scatter.js`` written into it."""
    page = (_FRONTEND / "index.html").read_text(encoding="utf-8")
    style = (_FRONTEND / "hover_scatter.css").read_text(encoding="utf-8")
    script = (_FRONTEND / "hover_scatter.js").read_text(encoding="utf-8")
    if _STYLESHEET_TAG not in page or _SCRIPT_TAG not in page or "</script" in script or "</style" in style:
        raise RuntimeError(f"{_FRONTEND}: index.html must link the stylesheet and script exactly once, as shipped.")
    # At the end of the body the inline script finds every element, as the deferred one did.
    page = page.replace(_STYLESHEET_TAG, f"<style>\n{style}</style>").replace(_SCRIPT_TAG, "")
    return page.replace("</body>", f"<script>\n{script}</script>\n</body>")


# Served folder -> its sources' modification times when the page there was last checked: every Explorer rerun
# calls _sync_frontend, and an unchanged checkout then costs three stat calls, not reading and comparing 50 kB.
_checked: dict[Path, tuple[int, ...]] = {}


def _sync_frontend(root: Path) -> None:
    """Write the served page (``served_page``) and the plotly.js bundle into the served folder when missing or
    different.

    Compared by content, not by date: a workspace copied with ``cp -r`` from an older install has newer dates.
    """
    sources = tuple((_FRONTEND / name).stat().st_mtime_ns for name in (*_SOURCES, PLOTLY_BUNDLE))
    if _checked.get(root) == sources:
        return
    for name, content in (
        ("index.html", served_page().encode("utf-8")),
        (PLOTLY_BUNDLE, (_FRONTEND / PLOTLY_BUNDLE).read_bytes()),
    ):
        target = root / name
        try:
            current = target.read_bytes() == content
        except FileNotFoundError:
            current = False
        if not current:
            atomic_write_bytes(target, content)
    _checked[root] = sources


def last_event(key: str) -> dict | None:
    """The newest click or selection of the component ``key`` (as ``hover_scatter`` returns it), read
    before the component is drawn, so a page can pass the selection it implies as ``selected_rows``."""
    import streamlit as st

    return _event_or_none(st.session_state.get(key))


def _event_or_none(value) -> dict | None:
    # A malformed value can only come from a stale frontend (a tab opened before an upgrade): no event, not a
    # traceback on the page; the next click or selection sends the current shape.
    try:
        return event_from_value(value)
    except ValueError:
        return None


def hover_scatter(
    panels: Sequence[Panel],
    *,
    hover_text: HoverText,
    thumbnails: ThumbnailSource,
    height: int = 560,
    selected_rows: Sequence[int] = (),
    dim_unselected: bool = False,
    grid_hover_from: int = GRID_HOVER_FROM,
    key: str,
) -> dict | None:
    """Draw ``panels`` side by side; hovering a point shows its photo, class, file and prediction.

    Hovering a point rings the same row in every panel, and so does selecting it (``selected_rows``,
    a ring that stays); a legend click hides or shows that class in all panels (double click: only
    that class).

    Parameters
    ----------
    panels : sequence of Panel
        Usually two (one per backbone), traces one per class in the same order and colours.
    hover_text : HoverText
        Tooltip text, one entry per row id used in the traces.
    thumbnails : ThumbnailSource
        From ``prepare_thumbnails`` (plus ``with_images`` for uploads).
    height : int
        Plot height in pixels.
    selected_rows : sequence of int
        Row ids to ring in every panel that shows them, e.g. the last click or selection
        (``last_event``); each must be on some panel. Changing them keeps zoom and hidden classes.
    dim_unselected : bool
        True (a box or lasso selection): every panel draws ``selected_rows`` in Plotly's selected style and greys the
        rest; False (a click): they are ringed.
    grid_hover_from : int
        From this many points hover uses the frontend's grid index instead of Plotly's (``GRID_HOVER_FROM``).
    key : str
        Streamlit widget key; required so reruns keep the same component (and its zoom).

    Returns
    -------
    dict or None
        The last click or selection, ``{"event": "click" | "select", "rows": [row ids], "seq": int}``,
        or None before any.
    """
    from streamlit.components.v1 import declare_component

    spec = build_spec(
        panels, hover_text=hover_text, thumbnails=thumbnails, height=height, grid_hover_from=grid_hover_from
    )
    _sync_frontend(thumbnails.web_root)
    component = declare_component(_COMPONENT_NAME, path=str(thumbnails.web_root))
    selected = selected_spec(spec, selected_rows)
    value = component(
        spec=spec, digest=spec_digest(spec), selected=selected, dim=bool(dim_unselected), key=key, default=None
    )
    return _event_or_none(value)
