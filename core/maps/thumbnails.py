"""Sprite sheets of thumbnails for photo-on-hover in the embedding explorer.

Thumbnail ``i`` of a list of images sits in sheet ``i // per_sheet`` at cell ``i % per_sheet``
(row-major, ``columns`` cells per line). A browser loads a sheet once (one request, one cached
image) and shows any thumbnail on it with CSS ``background-position``, so hovering needs no
request per photo. Sheets are WebP with transparent padding around aspect-preserved thumbnails.

Sheets are written under ``<out_dir>/<key>/`` where ``key`` hashes the image paths, their sizes and
modification times and the layout, so an unchanged dataset reuses its sheets and a changed one
gets new sheets (and new URLs, which defeats stale browser caches).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from PIL import Image, ImageOps

from core.base.errors import BadImageError
from core.base.fileio import atomic_write_bytes
from core.base.progress import ProgressCallback, RateMeter, report
from core.data.images import load_image, placeholder_image

# Bump when the sheet pixels or the manifest change meaning, so old caches are not reused.
_FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
# WebP quality 80: at 64-96 px, lower qualities smear petals visibly and higher ones grow files
# ~40 % for no visible gain.
_WEBP_QUALITY = 80
# Progress every this many thumbnails: often enough for a smooth bar, rare enough to cost nothing.
_PROGRESS_EVERY = 64


@dataclass(frozen=True)
class SpriteSheets:
    """Where each thumbnail lives: sheet files in ``directory`` and the grid layout.

    ``sheet_bytes`` lets a browser decide which sheets to prefetch within a byte budget.
    """

    directory: Path
    key: str
    n_images: int
    thumb_px: int
    columns: int
    per_sheet: int
    sheet_files: tuple[str, ...]
    sheet_bytes: tuple[int, ...]
    n_placeholders: int  # images that could not be read and show the placeholder instead

    def cell(self, index: int) -> tuple[int, int, int]:
        """``(sheet, column, line)`` of thumbnail ``index``."""
        if not 0 <= index < self.n_images:
            raise IndexError(f"index must be in [0, {self.n_images}); got {index}.")
        return sprite_cell(index, columns=self.columns, per_sheet=self.per_sheet)


# The manifest holds every field of the record but the directory, where the manifest itself lies.
_MANIFEST_FIELDS = tuple(f.name for f in fields(SpriteSheets) if f.name != "directory")


def sprite_cell(index: int, *, columns: int, per_sheet: int) -> tuple[int, int, int]:
    """``(sheet, column, line)`` of thumbnail ``index`` in sheets of ``per_sheet`` cells, ``columns`` wide."""
    sheet, cell = divmod(index, per_sheet)
    line, column = divmod(cell, columns)
    return sheet, column, line


def sprite_sheet_key(paths: Sequence[str | os.PathLike], *, thumb_px: int, columns: int) -> str:
    """Hex digest naming a set of sheets: changes when any path, file size or mtime, or the layout changes."""
    digest = hashlib.sha256(f"v{_FORMAT_VERSION} {thumb_px} {columns}\n".encode())
    for path in paths:
        try:
            stat = os.stat(path)
            signature = f"{stat.st_size} {stat.st_mtime_ns}"
        except OSError:
            signature = "missing"
        digest.update(f"{os.fspath(path)}\0{signature}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def square_thumbnail(image: Image.Image, *, size: int) -> Image.Image:
    """``image`` scaled to fit a ``size`` x ``size`` RGBA square, centred, padding transparent."""
    fitted = ImageOps.contain(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
    cell = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    cell.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return cell


def _thumbnail_or_placeholder(path: str | os.PathLike, *, size: int) -> tuple[Image.Image, bool]:
    try:
        return square_thumbnail(load_image(path, draft_size=size), size=size), False
    except BadImageError:
        return square_thumbnail(placeholder_image(max(size, 8)), size=size), True


def _encode_webp(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="WEBP", quality=_WEBP_QUALITY, method=4)
    return out.getvalue()


def thumbnail_data_url(image: Image.Image, *, size: int) -> str:
    """A ``data:image/webp;base64,...`` URL of ``image`` as a ``size`` px square thumbnail.

    For the few images that are not in any sheet (uploads on the explorer), sent inline.
    """
    return "data:image/webp;base64," + base64.b64encode(_encode_webp(square_thumbnail(image, size=size))).decode()


def _load_manifest(directory: Path) -> SpriteSheets | None:
    try:
        data = json.loads((directory / _MANIFEST).read_text())
        saved = {name: data[name] for name in _MANIFEST_FIELDS}
        complete = data["version"] == _FORMAT_VERSION and all(
            (directory / name).is_file() for name in data["sheet_files"]
        )
    except (OSError, ValueError, KeyError, TypeError):  # absent, half-written by an old crash, or foreign
        return None
    if not complete:
        return None
    # JSON gives lists where the record holds tuples
    return SpriteSheets(directory=directory, **{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def planned_sprite_sheets(
    paths: Sequence[str | os.PathLike],
    *,
    out_dir: str | os.PathLike,
    thumb_px: int,
    columns: int,
    bytes_per_pixel: float,
) -> tuple[SpriteSheets, bool]:
    """The sheets ``build_sprite_sheets`` writes for ``paths`` (same key, names and layout) before they exist,
    and whether they are all built already.

    Lets a browser be told where every thumbnail will be while the sheets are still being built in the
    background (each sheet is written atomically, so a fetched sheet is always whole). ``sheet_bytes`` are
    estimates, ``bytes_per_pixel`` of a full sheet's pixels each, for the browser's prefetch budget.
    """
    key = sprite_sheet_key(paths, thumb_px=thumb_px, columns=columns)
    per_sheet = columns * columns
    n_sheets = -(-len(paths) // per_sheet)
    estimate = int(per_sheet * thumb_px * thumb_px * bytes_per_pixel)
    planned = SpriteSheets(
        directory=Path(out_dir) / key,
        key=key,
        n_images=len(paths),
        thumb_px=thumb_px,
        columns=columns,
        per_sheet=per_sheet,
        sheet_files=tuple(f"sheet_{index:04d}.webp" for index in range(n_sheets)),
        sheet_bytes=(estimate,) * n_sheets,
        n_placeholders=0,
    )
    return planned, _load_manifest(planned.directory) is not None


def build_sprite_sheets(
    paths: Sequence[str | os.PathLike],
    *,
    out_dir: str | os.PathLike,
    thumb_px: int = 64,
    columns: int = 16,
    progress: ProgressCallback | None = None,
) -> SpriteSheets:
    """Pack thumbnails of ``paths`` into WebP sheets of ``columns`` x ``columns`` cells.

    Unreadable or missing files get ``core.data.images.placeholder_image``, never an error, so one bad
    photo cannot break the explorer. Sheets already built for the same inputs are reused.

    Parameters
    ----------
    paths : sequence of path-like, length n_images
        Image files; thumbnail ``i`` is ``paths[i]``.
    out_dir : path-like
        Parent folder; the sheets go to ``out_dir/<key>/``.
    thumb_px : int
        Cell side in pixels (8-256).
    columns : int
        Cells per sheet side (1-64); a sheet is ``columns * thumb_px`` pixels square (the last
        one only as tall as its lines of thumbnails).
    progress : ProgressCallback or None
        Receives ``"thumbnails"`` events, ``done`` counting images.

    Returns
    -------
    SpriteSheets
    """
    if not 8 <= thumb_px <= 256:
        raise ValueError(f"thumb_px must be from 8 to 256 pixels; got {thumb_px}.")
    if not 1 <= columns <= 64 or columns * thumb_px > 16_383:  # WebP's largest side is 16,383 px
        raise ValueError(f"columns must be from 1 to 64 with columns * thumb_px <= 16383; got {columns}.")
    key = sprite_sheet_key(paths, thumb_px=thumb_px, columns=columns)
    directory = Path(out_dir) / key
    cached = _load_manifest(directory)
    if cached is not None:
        report(progress, "thumbnails", len(paths), len(paths), message="thumbnails already built")
        return cached

    per_sheet = columns * columns
    side = columns * thumb_px
    sheet_files: list[str] = []
    sheet_bytes: list[int] = []
    n_placeholders = 0
    meter = RateMeter()
    report(progress, "thumbnails", 0, len(paths), message=f"building thumbnails of {len(paths)} images")
    for first in range(0, len(paths), per_sheet):
        last = min(first + per_sheet, len(paths))
        # The last sheet keeps only the lines it uses; browsers scale sheets by width alone.
        sheet = Image.new("RGBA", (side, -(-(last - first) // columns) * thumb_px), (0, 0, 0, 0))
        for index in range(first, last):
            thumb, is_placeholder = _thumbnail_or_placeholder(paths[index], size=thumb_px)
            n_placeholders += is_placeholder
            _, column, line = sprite_cell(index, columns=columns, per_sheet=per_sheet)
            sheet.paste(thumb, (column * thumb_px, line * thumb_px))
            if (index + 1) % _PROGRESS_EVERY == 0:
                report(progress, "thumbnails", index + 1, len(paths), rate=meter.rate(index + 1))
        name = f"sheet_{len(sheet_files):04d}.webp"
        data = _encode_webp(sheet)
        atomic_write_bytes(directory / name, data)
        sheet_files.append(name)
        sheet_bytes.append(len(data))

    sheets = SpriteSheets(
        directory=directory,
        key=key,
        n_images=len(paths),
        thumb_px=thumb_px,
        columns=columns,
        per_sheet=per_sheet,
        sheet_files=tuple(sheet_files),
        sheet_bytes=tuple(sheet_bytes),
        n_placeholders=n_placeholders,
    )
    manifest = {"version": _FORMAT_VERSION, **{name: getattr(sheets, name) for name in _MANIFEST_FIELDS}}
    # The manifest is written last: its presence marks a complete set of sheets.
    atomic_write_bytes(directory / _MANIFEST, json.dumps(manifest).encode())
    report(progress, "thumbnails", len(paths), len(paths), rate=meter.rate(len(paths)))
    return sheets
