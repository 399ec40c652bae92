"""A catalogue of odd and hostile image files for tests, written on demand into a folder.

``write_catalogue(folder)`` writes one small file per case (good photos in every colour mode,
EXIF rotation, a 100-megapixel JPEG, wrong extensions, empty, truncated and corrupt files,
decompression bombs) and returns what each file should do when loaded. ``HOSTILE_NAMES`` holds
class and file names for escaping tests, ``HOSTILE_FILE_NAMES`` the same names made valid on disk.
Everything is generated here, nothing is downloaded, and the whole catalogue is written in about
1 s (the 10000 x 10000 JPEG ~0.4 s, the two bomb PNGs ~0.4 s).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import pillow_heif
except ImportError:  # the HEIC case is left out where pillow_heif is not installed
    pillow_heif = None

RGB = tuple[int, int, int]

HOSTILE_NAMES: list[str] = [
    "<img src=x onerror=alert(1)>",
    'quotes\' and "double"',
    "<script>alert(1)</script>",
    "Löwenzahn 蒲公英",
    "**bold** [link](javascript:alert(1))",
]

# "/" separates folders, so on disk it becomes U+2215 DIVISION SLASH; the names keep their payload
# (an unescaped "<script>" still opens a script element), so escaping tests catch the same bugs.
HOSTILE_FILE_NAMES: list[str] = [name.replace("/", "\u2215") for name in HOSTILE_NAMES]


@dataclass(frozen=True)
class CatalogueEntry:
    """One catalogue file and what loading it should give.

    ``expected_size`` is the (width, height) after loading, EXIF rotation applied; ``expected_pixels``
    are ((x, y), (r, g, b)) probes in the loaded RGB image (lossy formats need a tolerance).
    Both are empty for files that must be refused (``expect_ok`` False).
    """

    filename: str
    expect_ok: bool
    description: str
    expected_size: tuple[int, int] | None = None
    expected_pixels: tuple[tuple[tuple[int, int], RGB], ...] = ()


@dataclass(frozen=True)
class _Case:
    entry: CatalogueEntry
    content: Callable[[], bytes]


RED, BLUE, GREEN, WHITE = (220, 30, 30), (30, 30, 220), (30, 160, 40), (255, 255, 255)


def _encode(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def _halves(left: RGB, right: RGB, *, size: tuple[int, int] = (64, 32)) -> Image.Image:
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def _noise_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    return _encode(Image.fromarray(pixels), "JPEG", quality=95)


def _exif_rotated_jpeg() -> bytes:
    # Stored 64 x 32, red left / blue right; orientation 6 means "rotate 90 degrees clockwise to view",
    # so the upright image is 32 x 64 with red on top.
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_halves(RED, BLUE), "JPEG", quality=95, exif=exif.tobytes())


def _palette_png() -> bytes:
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, *RED, *BLUE])
    image.paste(1, (8, 0, 16, 16))
    return _encode(image, "PNG", transparency=0)  # left half fully transparent


def _rgba_png() -> bytes:
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))  # transparent black must not show as black
    image.paste((*BLUE, 255), (8, 0, 16, 16))
    return _encode(image, "PNG")


def _la_png() -> bytes:
    image = Image.new("LA", (16, 16), (0, 0))
    image.paste((100, 255), (8, 0, 16, 16))
    return _encode(image, "PNG")


def _grey16_png() -> bytes:
    gradient = np.linspace(0, 65535, 256).round().astype(np.uint16)
    return _encode(Image.fromarray(np.tile(gradient, (16, 1))), "PNG")


def _animated_gif() -> bytes:
    first, second = Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)
    return _encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def _heic() -> bytes:
    out = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (64, 48), GREEN)).save(out, quality=90)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _blank_1bit_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG written row by row: huge in pixels, tiny on disk, built in ~0.3 s."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _corrupt_png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(2048)


def _cases() -> dict[str, _Case]:
    def ok(filename, description, size, content, pixels=()):
        return _Case(CatalogueEntry(filename, True, description, size, tuple(pixels)), content)

    def bad(filename, description, content):
        return _Case(CatalogueEntry(filename, False, description), content)

    cases = {
        "rgb_jpeg": ok(
            "good.jpg",
            "plain RGB JPEG",
            (64, 32),
            lambda: _encode(_halves(RED, BLUE), "JPEG", quality=95),
            [((8, 16), RED), ((56, 16), BLUE)],
        ),
        "exif_rotated": ok(
            "rotated.jpg",
            "JPEG with EXIF orientation 6 (stored sideways)",
            (32, 64),
            _exif_rotated_jpeg,
            [((16, 8), RED), ((16, 56), BLUE)],
        ),
        "grey_png": ok(
            "grey.png",
            "8-bit greyscale PNG (mode L)",
            (16, 16),
            lambda: _encode(Image.new("L", (16, 16), 90), "PNG"),
            [((4, 4), (90, 90, 90))],
        ),
        "palette_png": ok(
            "palette.png",
            "palette PNG with a transparent index (mode P)",
            (16, 16),
            _palette_png,
            [((2, 8), WHITE), ((12, 8), RED)],
        ),
        "rgba_png": ok(
            "rgba.png",
            "RGBA PNG, left half fully transparent black",
            (16, 16),
            _rgba_png,
            [((2, 8), WHITE), ((12, 8), BLUE)],
        ),
        "la_png": ok(
            "grey_alpha.png",
            "greyscale + alpha PNG (mode LA)",
            (16, 16),
            _la_png,
            [((2, 8), WHITE), ((12, 8), (100, 100, 100))],
        ),
        "cmyk_jpeg": ok(
            "cmyk.jpg",
            "CMYK JPEG (Pillow writes the Adobe inverted kind)",
            (16, 16),
            lambda: _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
            [((8, 8), (255, 0, 0))],
        ),
        "grey16_png": ok(
            "grey16.png",
            "16-bit greyscale PNG (mode I;16), black-to-white gradient",
            (256, 16),
            _grey16_png,
            [((0, 8), (0, 0, 0)), ((255, 8), WHITE)],
        ),
        "webp": ok(
            "photo.webp",
            "lossy WebP",
            (64, 32),
            lambda: _encode(_halves(RED, BLUE), "WEBP", quality=90),
            [((8, 16), RED), ((56, 16), BLUE)],
        ),
        "one_pixel": ok(
            "dot.png", "1 x 1 PNG", (1, 1), lambda: _encode(Image.new("RGB", (1, 1), GREEN), "PNG"), [((0, 0), GREEN)]
        ),
        "animated_gif": ok(
            "animated.gif", "two-frame GIF: the first (red) frame is used", (16, 16), _animated_gif, [((8, 8), RED)]
        ),
        "huge_jpeg": ok(
            "huge.jpg",
            "10000 x 10000 solid JPEG (100 MP, under the default limit)",
            (10000, 10000),
            lambda: _encode(Image.new("RGB", (10000, 10000), GREEN), "JPEG", quality=50),
            [((5000, 5000), GREEN)],
        ),
        "wrong_extension": ok(
            "really_a_png.jpg",
            "PNG content behind a .jpg name",
            (16, 16),
            lambda: _encode(Image.new("RGB", (16, 16), BLUE), "PNG"),
            [((8, 8), BLUE)],
        ),
        "not_an_image": bad(
            "notes.jpg", "plain text named .jpg", lambda: b"These are my notes about flowers, not a photo.\n" * 20
        ),
        "zero_bytes": bad("empty.jpg", "zero-byte file", lambda: b""),
        "truncated_jpeg": bad(
            "truncated.jpg", "valid JPEG cut in half", lambda: (lambda data: data[: len(data) // 2])(_noise_jpeg())
        ),
        "corrupt_png": bad("corrupt.png", "PNG signature followed by random bytes", _corrupt_png),
        "over_limit_png": bad(
            "over_limit.png",
            "12000 x 11000 1-bit PNG: 132 MP, over our 120 MP limit, under Pillow's",
            lambda: _blank_1bit_png(12000, 11000),
        ),
        "bomb_png": bad(
            "bomb.png",
            "30000 x 30000 1-bit PNG decompression bomb (900 MP, ~110 kB)",
            lambda: _blank_1bit_png(30000, 30000),
        ),
    }
    if pillow_heif is not None:
        cases["heic"] = ok("photo.heic", "HEIC from a phone", (64, 48), _heic, [((32, 24), GREEN)])
    return cases


CASE_KEYS: tuple[str, ...] = tuple(_cases())
"""Every case name ``write_catalogue`` returns, known before writing (for pytest parametrisation)."""


def write_catalogue(folder: Path) -> dict[str, CatalogueEntry]:
    """Write every case into ``folder`` (created if needed) and return the entries by case name.

    Parameters
    ----------
    folder : pathlib.Path
        Destination; files are named after ``CatalogueEntry.filename``.

    Returns
    -------
    dict of str to CatalogueEntry
        One entry per written file; "heic" is absent where pillow_heif is not installed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for key, case in _cases().items():
        (folder / case.entry.filename).write_bytes(case.content())
        entries[key] = case.entry
    return entries
