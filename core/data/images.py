"""The one place where Flower Probe turns a file into pixels: ``load_image`` and small helpers.

Every image (dataset photo, upload on the Classify page, gallery thumbnail) goes through
``load_image``, so every odd file is handled the same way everywhere: EXIF orientation applied,
any colour mode (greyscale, 16-bit, palette, alpha, CMYK) turned into 8-bit RGB, the format found
from the content (never the file extension), and anything unreadable or dangerously large refused
with a one-line ``BadImageError`` that names the file. Also here: in-memory thumbnails for
galleries, a placeholder for files that cannot be shown, and the upload types the UI accepts.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO, Union

from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from core.base.errors import BadImageError

try:
    import pillow_heif
except ImportError:  # HEIC support is optional: without it HEIC files are refused as unknown.
    HEIF_AVAILABLE = False
else:
    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]

# 120 megapixels: the largest phone and DSLR photos (10000 x 10000 = 100 MP, 108 MP phone sensors)
# must load, while a decoded image stays at most ~360 MB of RGB. Pillow's own hard stop
# (2 * Image.MAX_IMAGE_PIXELS, ~179 MP) sits above this, so our check is the one users meet.
DEFAULT_MAX_PIXELS = 120_000_000

# Formats are recognised from the content but only these decoders may run: exotic Pillow plugins
# add attack surface for no benefit (EPS even runs Ghostscript), and photos come in these. Phone
# multi-picture JPEGs (MPO) open through the JPEG entry.
_ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF") + (("HEIF",) if HEIF_AVAILABLE else ())
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF" + (" or HEIC" if HEIF_AVAILABLE else "")

SUPPORTED_UPLOAD_TYPES: list[str] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"] + (
    ["heic", "heif"] if HEIF_AVAILABLE else []
)

# Pillow's decoders report malformed input with these, not only OSError (see Pillow's fuzz tests).
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error)

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = (255, 255, 255)


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Load one image as 8-bit RGB, or refuse it with a one-line ``BadImageError``.

    Parameters
    ----------
    source : str, os.PathLike, bytes or binary file-like object
        A path, the file's bytes, or an object with ``read`` (Streamlit's ``UploadedFile``);
        file-like objects are read from their start. Paths are closed before returning.
    max_pixels : int
        Largest ``width * height`` accepted, checked from the header before any pixel is decoded
        (decompression bombs). At most Pillow's hard limit, ``2 * Image.MAX_IMAGE_PIXELS``.
    draft_size : int or None
        Optional size hint in pixels for JPEG: the decoder then scales by 1/2, 1/4 or 1/8 while
        decoding, keeping both sides >= ``draft_size``, so a 10000 x 10000 JPEG loads as
        1250 x 1250 in a fraction of the time and memory. Other formats ignore it. Use it when
        the caller resizes afterwards anyway (backbones, thumbnails).
    name : str or None
        How error messages name the file; defaults to the path's file name or the object's
        ``name`` attribute.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, upright (EXIF orientation applied), transparency composited on white,
        first frame of an animation.

    Raises
    ------
    BadImageError
        Unreadable, empty, not an image, unsupported format, truncated, corrupt, or too large.
    """
    _check_limits(max_pixels=max_pixels, draft_size=draft_size)
    label = name if name is not None else _source_name(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            handle = open(source, "rb")  # noqa: SIM115 - opened apart, so only its failure reads "could not be opened"
        except OSError as exc:
            raise _refusal(label, f"the file could not be opened ({exc.strerror or exc})") from exc
        with handle:
            return _decode(handle, label=label, max_pixels=max_pixels, draft_size=draft_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(source), label=label, max_pixels=max_pixels, draft_size=draft_size)
    if hasattr(source, "read"):
        try:
            seekable = getattr(source, "seekable", None)
            stream = source if seekable and seekable() else io.BytesIO(source.read())
        except OSError as exc:
            raise _refusal(label, f"the file could not be read ({exc})") from exc
        return _decode(stream, label=label, max_pixels=max_pixels, draft_size=draft_size)
    raise TypeError(
        f"source must be a path, bytes or a binary file-like object; got {type(source).__name__}: {source!r:.80}"
    )


def thumbnail_bytes(image: Image.Image, *, size: int = 96, format: str = "WEBP", quality: int = 80) -> bytes:
    """Encode a small aspect-preserving copy of ``image`` whose longest side is ``size`` pixels.

    Parameters
    ----------
    image : PIL.Image.Image
        Any mode; normally the RGB result of ``load_image``. Smaller images are scaled up.
    size : int
        Longest side of the thumbnail in pixels, >= 1.
    format : str
        Any format Pillow can write, e.g. ``"WEBP"``, ``"JPEG"``, ``"PNG"``.
    quality : int
        Encoder quality 1-100 for lossy formats.

    Returns
    -------
    bytes
        The encoded thumbnail.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a whole number of pixels >= 1; got {size!r}")
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be a whole number from 1 to 100; got {quality!r}")
    Image.init()
    if not isinstance(format, str) or format.upper() not in Image.SAVE:
        raise ValueError(f"format must be one Pillow can write (e.g. WEBP, JPEG, PNG); got {format!r}")
    rgb = _to_rgb(image)
    thumb = rgb.resize(_fit_within(*rgb.size, size=size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    thumb.save(out, format=format.upper(), quality=quality)
    return out.getvalue()


def placeholder_image(size: int = 96) -> Image.Image:
    """A neutral grey square with a broken-picture mark, shown in place of an unreadable file.

    Parameters
    ----------
    size : int
        Side in pixels, >= 8.

    Returns
    -------
    PIL.Image.Image
        Mode ``"RGB"``, ``size`` x ``size``.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be a whole number of pixels >= 8; got {size!r}")
    background, ink = (200, 200, 200), (120, 120, 120)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    line = max(1, size // 24)
    left, top, right, bottom = size * 0.2, size * 0.25, size * 0.8, size * 0.75
    draw.rectangle((left, top, right, bottom), outline=ink, width=line)
    # A mountain and a sun say "picture"; the zigzag crack through the frame says "broken".
    draw.polygon([(left + line, bottom - line), (size * 0.4, size * 0.5), (size * 0.55, bottom - line)], fill=ink)
    draw.ellipse((size * 0.62, size * 0.32, size * 0.72, size * 0.42), fill=ink)
    crack = [
        (size * 0.55, top - line),
        (size * 0.48, size * 0.45),
        (size * 0.58, size * 0.55),
        (size * 0.5, bottom + line),
    ]
    draw.line(crack, fill=background, width=max(2, line * 2), joint="curve")
    return image


def _check_limits(*, max_pixels: int, draft_size: int | None) -> None:
    hard_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    if not isinstance(max_pixels, int) or max_pixels < 1 or (hard_limit and max_pixels > hard_limit):
        raise ValueError(
            f"max_pixels must be a whole number from 1 to {hard_limit or 'any'} "
            f"(Pillow's own limit); got {max_pixels!r}"
        )
    if draft_size is not None and (not isinstance(draft_size, int) or draft_size < 1):
        raise ValueError(f"draft_size must be None or a whole number of pixels >= 1; got {draft_size!r}")


def _decode(stream: BinaryIO, *, label: str, max_pixels: int, draft_size: int | None) -> Image.Image:
    if _stream_size(stream) == 0:
        raise _refusal(label, "the file is empty (0 bytes)")
    limit = f"the {max_pixels / 1e6:g}-megapixel limit; resize it smaller first"
    try:
        # Sizes between Pillow's warning threshold and max_pixels are fine by our own check below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream, formats=_ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise _refusal(label, f"it is {width} x {height} pixels, over {limit}")
            if draft_size is not None:
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # forces the full decode here, so truncation is caught inside the try
            ImageOps.exif_transpose(image, in_place=True)
            return _to_rgb(image)
    except Image.DecompressionBombError as exc:
        raise _refusal(label, f"it is over {limit} (possible decompression bomb)") from exc
    except UnidentifiedImageError as exc:
        raise _refusal(
            label, f"the content is not a readable {_FORMAT_NAMES} image (another file type, or damaged)"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise _refusal(label, f"the file is truncated or corrupt ({exc}); re-export or re-download it") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit_grey(image)
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flattened = Image.new("RGB", rgba.size, _WHITE)
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    return image.convert("RGB")


def _to_8bit_grey(image: Image.Image) -> Image.Image:
    # Pillow's own convert("L") clips 16-bit values at 255 (a 16-bit photo turns white); scale instead.
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    low, high = _source_range(image.mode, *image.getextrema())
    scale, offset = _linear_map(low, high)
    return image.point(lambda value: value * scale + offset + 0.5).convert("L")


def _source_range(mode: str, low: float, high: float) -> tuple[float, float]:
    """The value range the pixel values were stored in: the smallest standard one holding them.

    ``mode`` is "I" (16-bit sources arrive widened to it) or "F"; data fitting no standard range
    (negative, or beyond 16 bits) is stretched from its own minimum to its maximum.
    """
    standard = [(0.0, 255.0), (0.0, 65535.0)]
    if mode == "F":
        standard.insert(0, (0.0, 1.0))
    for range_low, range_high in standard:
        if range_low <= low and high <= range_high:
            return range_low, range_high
    return float(low), float(high)


def _linear_map(low: float, high: float) -> tuple[float, float]:
    """Scale and offset taking ``low`` to 0 and ``high`` to 255 (a flat image maps to 0)."""
    scale = 255.0 / (high - low) if high > low else 0.0
    return scale, -low * scale


def _fit_within(width: int, height: int, *, size: int) -> tuple[int, int]:
    """Width and height with the longest side equal to ``size`` and the aspect ratio kept."""
    longest = max(width, height)
    return max(1, round(width * size / longest)), max(1, round(height * size / longest))


def _stream_size(stream: BinaryIO) -> int:
    position = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(position)
    return end


def _source_name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(os.fspath(source)).name or str(source)
    attribute = getattr(source, "name", None)
    if isinstance(attribute, str) and attribute:
        return Path(attribute).name or attribute
    return "uploaded image"


def _display_name(name: str) -> str:
    # Messages are one line: control characters (newlines in a hostile file name) are escaped.
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in str(name))


def _refusal(label: str, reason: str) -> BadImageError:
    return BadImageError(_display_name(f"Cannot load image '{label}': {reason}."))
