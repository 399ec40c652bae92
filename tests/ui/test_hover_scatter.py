"""Tests for the hover_scatter component's Python side and core.maps.thumbnails (sprite sheets).

The browser side (plotly.js, hover, selection, hostile names shown as text) is exercised by the real-browser tests
in tests/browser/; here: the spec sent to the browser, its size bound, sprite packing, the events read back, and the
served folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.maps.thumbnails import SpriteSheets, build_sprite_sheets, sprite_cell, sprite_sheet_key
from ui import hover_scatter as hs
from ui.hover_scatter import HoverText, Panel, ThumbnailSource, Trace, build_spec, event_from_value

FRONTEND = Path(hs.__file__).parent / "frontend"


def _solid_images(folder: Path, count: int) -> tuple[list[Path], list[tuple[int, int, int]]]:
    rng = np.random.default_rng(0)
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(count)]
    paths = []
    for index, colour in enumerate(colours):
        path = folder / f"img_{index:03d}.png"
        Image.new("RGB", (24, 16), colour).save(path)
        paths.append(path)
    return paths, colours


def test_sprite_cell_is_row_major_within_sheets():
    assert sprite_cell(0, columns=4, per_sheet=16) == (0, 0, 0)
    assert sprite_cell(5, columns=4, per_sheet=16) == (0, 1, 1)
    assert sprite_cell(15, columns=4, per_sheet=16) == (0, 3, 3)
    assert sprite_cell(16, columns=4, per_sheet=16) == (1, 0, 0)
    assert sprite_cell(37, columns=4, per_sheet=16) == (2, 1, 1)


def test_sprite_sheets_put_each_image_in_its_cell(tmp_path):
    paths, colours = _solid_images(tmp_path, 37)
    paths[4] = tmp_path / "missing.jpg"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    paths[20] = broken

    sheets = build_sprite_sheets(paths, out_dir=tmp_path / "sprites", thumb_px=16, columns=4)

    assert len(sheets.sheet_files) == 3 and sheets.n_images == 37 and sheets.n_placeholders == 2
    assert [(sheets.directory / name).stat().st_size for name in sheets.sheet_files] == list(sheets.sheet_bytes)
    decoded = [np.asarray(Image.open(sheets.directory / name).convert("RGBA")) for name in sheets.sheet_files]
    assert decoded[0].shape == (64, 64, 4) and decoded[2].shape == (32, 64, 4), "last sheet: 2 lines of 4"
    for index, colour in enumerate(colours):
        sheet, column, line = sheets.cell(index)
        # 24 x 16 images fit a 16 px cell as 16 x 11, centred: rows 2..13 are photo, row 0 padding
        cell = decoded[sheet][line * 16 : line * 16 + 16, column * 16 : column * 16 + 16].astype(int)
        centre, top = cell[8, 8], cell[0, 8]
        if index in (4, 20):  # the grey placeholder fills its whole cell
            assert cell[..., 3].min() == 255 and np.abs(cell[..., 0] - cell[..., 2]).max() <= 32
            continue
        assert centre[3] == 255 and top[3] == 0, f"image {index}: photo centred, padding transparent"
        assert np.abs(centre[:3].astype(int) - colour).max() <= 16, f"image {index} is not in its cell"
    with pytest.raises(IndexError):
        sheets.cell(37)


def test_sprite_sheets_are_reused_until_an_image_changes(tmp_path):
    paths, _ = _solid_images(tmp_path, 5)
    first = build_sprite_sheets(paths, out_dir=tmp_path / "sprites", thumb_px=16, columns=4)
    sheet = first.directory / first.sheet_files[0]
    written = sheet.stat().st_mtime_ns
    again = build_sprite_sheets(paths, out_dir=tmp_path / "sprites", thumb_px=16, columns=4)
    assert again == first and sheet.stat().st_mtime_ns == written

    Image.new("RGB", (30, 30), (1, 2, 3)).save(paths[2])
    changed = build_sprite_sheets(paths, out_dir=tmp_path / "sprites", thumb_px=16, columns=4)
    assert changed.key != first.key
    assert sprite_sheet_key(paths, thumb_px=32, columns=4) != changed.key


def test_sprite_sheets_validate_layout(tmp_path):
    with pytest.raises(ValueError, match="thumb_px"):
        build_sprite_sheets([], out_dir=tmp_path, thumb_px=4)
    with pytest.raises(ValueError, match="columns"):
        build_sprite_sheets([], out_dir=tmp_path, thumb_px=64, columns=300)


def _fake_sheets(n_images: int, thumb_px: int = 64) -> SpriteSheets:
    count = -(-n_images // 256)
    return SpriteSheets(
        directory=Path("/nonexistent"),
        key="ab" * 12,
        n_images=n_images,
        thumb_px=thumb_px,
        columns=16,
        per_sheet=256,
        sheet_files=tuple(f"sheet_{i:04d}.webp" for i in range(count)),
        sheet_bytes=(400_000,) * count,
        n_placeholders=0,
    )


def _synthetic_spec(n_points: int, *, n_classes: int = 17, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, n_classes, n_points))
    names = [f"Class {index} <img src=x onerror=alert(1)>" for index in range(n_classes)]
    panels = []
    for panel in range(2):
        positions = rng.normal(size=(n_classes, 2))[labels] * 40 + rng.normal(size=(n_points, 2)) * 3
        traces = [
            Trace(
                name=names[c],
                x=positions[labels == c, 0],
                y=positions[labels == c, 1],
                rows=np.flatnonzero(labels == c),
                colour=f"#{c:02x}8040",
                correct=rng.random((labels == c).sum()) > 0.2,
            )
            for c in range(n_classes)
        ]
        panels.append(Panel(title=f"Backbone {panel}", traces=traces))
    hover_text = HoverText(
        class_names=[names[c] for c in labels],
        file_names=[f"image_{row:05d}.jpg" for row in range(n_points)],
        predictions=[names[(c + (row % 7 == 0)) % n_classes] for row, c in enumerate(labels)],
    )
    thumbnails = ThumbnailSource(web_root=Path("/nonexistent"), sheets=_fake_sheets(n_points))
    return build_spec(panels, hover_text=hover_text, thumbnails=thumbnails)


def test_payload_for_20000_points_stays_bounded():
    spec = _synthetic_spec(20_000)
    encoded = json.dumps(spec)
    # ~75 bytes a point for two panels with correct/incorrect flags and file names; no images inline
    assert len(encoded) < 20_000 * 100, f"spec is {len(encoded)} bytes"
    assert "data:" not in encoded and len(spec["thumbs"]["sheets"]) == 79
    assert len(spec["text"]["strings"]) == 17, "class names are stored once, rows refer to them"
    assert sum(len(trace["rows"]) for trace in spec["panels"][0]["traces"]) == 20_000


def test_spec_keeps_rows_text_and_thumbnail_layout():
    spec = _synthetic_spec(300)
    first = spec["panels"][1]["traces"][3]
    assert len(first["x"]) == len(first["y"]) == len(first["rows"]) == len(first["correct"])
    assert set(first["correct"]) <= {0, 1}
    row = first["rows"][0]
    text = spec["text"]
    assert text["strings"][text["cls"][row]] == "Class 3 <img src=x onerror=alert(1)>"
    assert text["file"][row] == f"image_{row:05d}.jpg"
    assert spec["thumbs"]["base"] == f"sprites/{'ab' * 12}/" and spec["thumbs"]["perSheet"] == 256
    assert hs.spec_digest(spec) == hs.spec_digest(json.loads(json.dumps(spec)))
    assert hs.spec_digest(spec) != hs.spec_digest(_synthetic_spec(300, seed=1))


def test_coordinates_keep_their_panel_apart_at_any_scale():
    # A PCA of random-weight features spans ~0.001: fixed decimals would put every point on the origin.
    rng = np.random.default_rng(0)
    tiny, wide = rng.normal(scale=3e-4, size=(2, 50)), rng.normal(scale=30.0, size=(2, 50))
    text = HoverText(class_names=["a"] * 50, file_names=[f"{i}.jpg" for i in range(50)])
    thumbnails = ThumbnailSource(web_root=Path("/nonexistent"), sheets=None)
    panels = [Panel(name, [Trace("a", x, y, list(range(50)), "red")]) for name, (x, y) in (("t", tiny), ("w", wide))]
    spec = build_spec(panels, hover_text=text, thumbnails=thumbnails)
    for panel, xy in zip(spec["panels"], (tiny, wide), strict=True):
        x = np.asarray(panel["traces"][0]["x"])
        span = np.ptp(xy[0])
        assert len(np.unique(x)) == 50 and np.abs(x - xy[0]).max() <= span / 10_000
    assert all(len(repr(v)) <= 8 for v in spec["panels"][1]["traces"][0]["x"]), "a t-SNE-sized map keeps short numbers"


def test_spec_rejects_mismatched_points_and_unknown_rows():
    text = HoverText(class_names=["a", "b"], file_names=["a.jpg", "b.jpg"])
    thumbnails = ThumbnailSource(web_root=Path("/nonexistent"), sheets=None)
    with pytest.raises(ValueError, match=r"panels\[0\]\.traces\[0\].*same length"):
        build_spec([Panel("p", [Trace("a", [0.0, 1.0], [0.0], [0, 1], "red")])], hover_text=text, thumbnails=thumbnails)
    with pytest.raises(ValueError, match=r"rows must be in \[0, 2\)"):
        build_spec([Panel("p", [Trace("a", [0.0], [0.0], [2], "red")])], hover_text=text, thumbnails=thumbnails)
    with pytest.raises(ValueError, match="finite"):
        build_spec([Panel("p", [Trace("a", [np.nan], [0.0], [0], "red")])], hover_text=text, thumbnails=thumbnails)
    with pytest.raises(ValueError, match="one entry per row"):
        build_spec([Panel("p", [])], hover_text=HoverText(["a"], []), thumbnails=thumbnails)
    with pytest.raises(ValueError, match="at least one Panel"):
        build_spec([], hover_text=text, thumbnails=thumbnails)


def test_selected_rows_travel_beside_the_spec_and_must_be_on_a_panel():
    spec = _synthetic_spec(300)
    digest = hs.spec_digest(spec)
    on_first = spec["panels"][0]["traces"][2]["rows"][:2]
    assert hs.selected_spec(spec, [on_first[1], on_first[0], on_first[1]]) == sorted(on_first)
    assert hs.selected_spec(spec, ()) == []
    assert hs.spec_digest(spec) == digest, (
        "a selection must not change the digest (the frontend would redraw, losing zoom)"
    )
    with pytest.raises(ValueError, match=r"selected_rows must be row ids shown on the panels; got 2 .*\[300, 1000\]"):
        hs.selected_spec(spec, [5, 1000, 300])


def test_uploads_travel_inline_and_predictions_may_be_missing():
    thumbnails = ThumbnailSource(web_root=Path("/nonexistent"), sheets=_fake_sheets(2, thumb_px=32))
    with_upload = thumbnails.with_images({2: Image.new("RGB", (50, 40), (200, 10, 10))})
    text = HoverText(
        class_names=["a", "b", "uploaded"], file_names=["a.jpg", "b.jpg", "me.png"], predictions=["b", None, "a"]
    )
    panel = Panel(
        "p", [Trace("a", [0, 1], [0, 1], [0, 1], "red"), Trace("uploads", [2], [2], [2], "black", highlight=True)]
    )
    spec = build_spec([panel], hover_text=text, thumbnails=with_upload)
    assert spec["thumbs"]["inline"]["2"].startswith("data:image/webp;base64,")
    assert spec["text"]["pred"] == [1, -1, 0]
    assert spec["panels"][0]["traces"][1]["highlight"] is True


def test_event_from_value_reads_plain_event_and_rows():
    assert event_from_value(None) is None
    value = {"event": "select", "rows": [5, 2, 5], "seq": 17}
    assert event_from_value(value) == {"event": "select", "rows": [5, 2], "seq": 17}
    assert event_from_value({"event": "hover", "rows": [3], "seq": 1})["rows"] == [3]
    with pytest.raises(ValueError, match=r"event must be one of \['hover', 'click', 'select'\]"):
        event_from_value({"event": "drag", "rows": [], "seq": 1})
    with pytest.raises(ValueError, match="rows must be a list of integer row ids"):
        event_from_value({"event": "click", "rows": [{"customdata": [5]}], "seq": 1})
    with pytest.raises(ValueError, match="rows must be a list of integer row ids"):
        event_from_value({"event": "click", "rows": [True], "seq": 1})
    # A value of the old canvas frontend (a tab opened before an upgrade) is no event, not an error on the page.
    assert hs._event_or_none({"event": "click", "points": [{"customdata": [5]}], "seq": 2}) is None


def test_hover_text_carries_verdicts_and_splits_once_each():
    text = HoverText(
        class_names=["a", "b", "a"],
        file_names=["1.jpg", "2.jpg", "3.jpg"],
        predictions=["a", "a", None],
        verdicts=["right", "wrong", None],
        splits=["test", "test", "train"],
    )
    spec = build_spec(
        [Panel("p", [Trace("a", [0.0, 1.0, 2.0], [0.0, 1.0, 0.0], [0, 1, 2], "red")])],
        hover_text=text,
        thumbnails=ThumbnailSource(web_root=Path("/nonexistent"), sheets=None),
    )
    t = spec["text"]
    assert [t["strings"][i] for i in t["verdict"][:2]] == ["right", "wrong"] and t["verdict"][2] == -1
    assert [t["strings"][i] for i in t["split"]] == ["test", "test", "train"]
    assert len(t["strings"]) == len(set(t["strings"])) == 6  # a, b, right, wrong, test, train
    with pytest.raises(ValueError, match="one entry per row"):
        build_spec(
            [Panel("p", [])],
            hover_text=HoverText(["a"], ["1.jpg"], splits=["test", "train"]),
            thumbnails=ThumbnailSource(web_root=Path("/nonexistent"), sheets=None),
        )


def test_frontend_is_served_offline_from_one_folder(workspace):
    root = hs.web_root(workspace)
    hs._sync_frontend(root)
    served = (root / "index.html").read_text(encoding="utf-8")
    assert served == hs.served_page()
    assert "://" not in served, "no CDN: the page must work offline"
    scripts = re.findall(r'<script[^>]* src="([^"]+)"', served)
    assert scripts == [hs.PLOTLY_BUNDLE], "plotly.js is the one script fetched; ours is inline"
    assert "<link" not in served, "the style is inline"
    bundle = root / hs.PLOTLY_BUNDLE
    assert bundle.read_bytes() == (FRONTEND / hs.PLOTLY_BUNDLE).read_bytes(), "the bundle is served from the folder"
    assert (FRONTEND / "plotly-gl2d.LICENSE").read_text().startswith("MIT License")
    assert served.index('<div id="tooltip"') < served.rindex("<script>"), "the script runs after the elements exist"
    stamps = [(root / name).stat().st_mtime_ns for name in ("index.html", hs.PLOTLY_BUNDLE)]
    hs._checked.clear()  # as a new server process: compares the files again
    hs._sync_frontend(root)
    assert [(root / name).stat().st_mtime_ns for name in ("index.html", hs.PLOTLY_BUNDLE)] == stamps, (
        "an up-to-date folder is not rewritten"
    )
    bundle.write_bytes(b"stale")
    hs._checked.clear()
    hs._sync_frontend(root)
    assert bundle.read_bytes() == (FRONTEND / hs.PLOTLY_BUNDLE).read_bytes(), "a stale copy is replaced"


def test_prepare_thumbnails_writes_into_the_served_folder(workspace, tmp_path):
    paths, _ = _solid_images(tmp_path, 3)
    source = hs.prepare_thumbnails(paths, workspace=workspace)
    assert source.sheets.thumb_px == 96
    assert source.sheets.directory.parent == hs.web_root(workspace) / "sprites"
    assert (source.web_root / hs._SPRITES_FOLDER / source.sheets.key / "sheet_0000.webp").is_file()


def test_component_mounts_in_a_streamlit_script(workspace, tmp_path):
    from streamlit.testing.v1 import AppTest

    def app(thumbnail_folder: str) -> None:
        from pathlib import Path

        import streamlit as st

        from ui.hover_scatter import HoverText, Panel, Trace, hover_scatter, prepare_thumbnails

        paths = sorted(Path(thumbnail_folder).glob("*.png"))
        thumbnails = prepare_thumbnails(paths)
        panel = Panel("map", [Trace("a", [0.0, 1.0, 2.0], [0.0, 1.0, 0.5], [0, 1, 2], "#ff0000")])
        text = HoverText(["a"] * 3, [path.name for path in paths])
        st.session_state["result"] = hover_scatter(
            [panel, panel], hover_text=text, thumbnails=thumbnails, selected_rows=[2, 0], key="map"
        )

    _solid_images(tmp_path, 3)
    at = AppTest.from_function(app, args=(str(tmp_path),)).run(timeout=30)
    assert not at.exception, at.exception
    assert at.session_state["result"] is None
    arguments = json.loads(at.get("component_instance")[0].proto.json_args)
    assert arguments["selected"] == [0, 2] and "selected" not in arguments["spec"]
    assert arguments["dim"] is False, "a selection is ringed unless the page asks to grey the rest"
    assert (hs.web_root(workspace) / "index.html").is_file()


def test_scores_colour_points_on_a_colour_bar(tmp_path):
    paths, _ = _solid_images(tmp_path, 3)
    text = HoverText(["a"] * 3, [path.name for path in paths])
    source = hs.ThumbnailSource(web_root=tmp_path, sheets=None)
    scored = Trace("score", [0.0, 1.0], [0.0, 1.0], [0, 2], "#888888", values=[0.25, 0.987654])
    bar = hs.ColourBar(title="label issue <score>", low=0.0, high=1.0)
    spec = hs.build_spec([Panel("map", [scored], colour_bar=bar)], hover_text=text, thumbnails=source)
    panel = spec["panels"][0]
    assert panel["colourBar"] == {"title": "label issue <score>", "low": 0.0, "high": 1.0, "scale": "Viridis"}
    assert panel["traces"][0]["values"] == [0.25, 0.9877]
    with pytest.raises(ValueError, match="colour_bar"):
        hs.build_spec([Panel("map", [scored])], hover_text=text, thumbnails=source)
    with pytest.raises(ValueError, match="same length"):
        hs.build_spec(
            [Panel("map", [Trace("s", [0.0], [0.0], [0], "#888", values=[1.0, 2.0])], colour_bar=bar)],
            hover_text=text,
            thumbnails=source,
        )
    with pytest.raises(ValueError, match="low <= high"):
        hs.build_spec(
            [Panel("map", [scored], colour_bar=hs.ColourBar("s", 2.0, 1.0))], hover_text=text, thumbnails=source
        )
    with pytest.raises(ValueError, match=r"scale must be one of \['Viridis', 'Cividis'\]; got 'Jet'"):
        hs.build_spec(
            [Panel("map", [scored], colour_bar=hs.ColourBar("s", 0.0, 1.0, scale="Jet"))],
            hover_text=text,
            thumbnails=source,
        )


def test_planned_thumbnails_name_the_sheets_prepare_thumbnails_then_writes(workspace, tmp_path):
    paths, _ = _solid_images(tmp_path, 3)
    planned, ready = hs.planned_thumbnails(paths, workspace=workspace)
    assert not ready and not planned.sheets.directory.exists(), "planning builds nothing"
    built = hs.prepare_thumbnails(paths, workspace=workspace)
    assert (planned.sheets.key, planned.sheets.sheet_files, planned.sheets.thumb_px) == (
        built.sheets.key,
        built.sheets.sheet_files,
        built.sheets.thumb_px,
    )
    assert all((built.sheets.directory / name).is_file() for name in planned.sheets.sheet_files)
    again, ready = hs.planned_thumbnails(paths, workspace=workspace)
    assert ready and again == planned, "the layout the browser got does not change when the sheets appear"
