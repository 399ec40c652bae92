"""Tests for core.data.images: every catalogue file loads as expected or is refused with a clear message."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image, ImageFile

from core.base.errors import BadImageError
from core.data.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_UPLOAD_TYPES,
    load_image,
    placeholder_image,
    thumbnail_bytes,
)
from tests.helpers.image_catalogue import CASE_KEYS, HOSTILE_FILE_NAMES, write_catalogue

# JPEG and WebP are lossy: probes allow this much per channel.
TOLERANCE = 12


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalogue")
    return folder, write_catalogue(folder)


def _assert_one_line_naming(error: BadImageError, filename: str) -> None:
    message = str(error)
    assert "\n" not in message and "\r" not in message
    assert filename in message


@pytest.mark.parametrize("key", CASE_KEYS)
def test_catalogue_file_loads_or_is_refused(catalogue, key):
    folder, entries = catalogue
    entry = entries[key]
    if not entry.expect_ok:
        with pytest.raises(BadImageError) as caught:
            load_image(folder / entry.filename)
        _assert_one_line_naming(caught.value, entry.filename)
        return
    image = load_image(folder / entry.filename)
    assert image.mode == "RGB"
    assert image.size == entry.expected_size
    for xy, expected in entry.expected_pixels:
        actual = image.getpixel(xy)
        assert max(abs(a - e) for a, e in zip(actual, expected)) <= TOLERANCE, (xy, actual, expected)


def test_sixteen_bit_gradient_is_scaled_not_clipped(catalogue):
    folder, entries = catalogue
    row = np.asarray(load_image(folder / entries["grey16_png"].filename))[8, :, 0]
    assert row.min() < 30 and row.max() > 225
    assert np.all(np.diff(row.astype(int)) >= 0)
    assert len(np.unique(row)) > 200  # clipping would leave only 0, 1 and 255


def test_float_image_is_scaled_from_unit_range():
    gradient = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (4, 1))
    data = io.BytesIO()
    Image.fromarray(gradient, mode="F").save(data, format="TIFF")
    row = np.asarray(load_image(data.getvalue()))[0, :, 0]
    assert row.min() < 30 and row.max() > 225


def test_transparent_pixels_become_white_not_black(catalogue):
    folder, entries = catalogue
    for key in ("rgba_png", "palette_png", "la_png"):
        assert load_image(folder / entries[key].filename).getpixel((0, 0)) == (255, 255, 255), key


def test_bomb_is_refused_before_decoding(catalogue):
    folder, entries = catalogue
    with pytest.raises(BadImageError, match="120-megapixel limit") as caught:
        load_image(folder / entries["over_limit_png"].filename)
    assert "12000 x 11000" in str(caught.value)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(folder / entries["bomb_png"].filename)
    assert DEFAULT_MAX_PIXELS >= 10000 * 10000


def test_max_pixels_is_honoured(catalogue):
    folder, entries = catalogue
    with pytest.raises(BadImageError, match="64 x 32 pixels"):
        load_image(folder / entries["rgb_jpeg"].filename, max_pixels=64 * 32 - 1)
    assert load_image(folder / entries["rgb_jpeg"].filename, max_pixels=64 * 32).size == (64, 32)


def test_draft_size_decodes_huge_jpeg_at_reduced_scale(catalogue):
    folder, entries = catalogue
    image = load_image(folder / entries["huge_jpeg"].filename, draft_size=512)
    assert image.mode == "RGB"
    assert min(image.size) >= 512 and max(image.size) <= 2000
    assert max(abs(a - e) for a, e in zip(image.getpixel((100, 100)), (30, 160, 40))) <= TOLERANCE


def test_draft_size_is_ignored_by_other_formats(catalogue):
    folder, entries = catalogue
    assert load_image(folder / entries["grey16_png"].filename, draft_size=8).size == (256, 16)


def test_bytes_and_file_like_sources_match_path(catalogue):
    folder, entries = catalogue
    path = folder / entries["exif_rotated"].filename
    expected = np.asarray(load_image(path))
    data = path.read_bytes()
    assert np.array_equal(np.asarray(load_image(data)), expected)
    already_read = io.BytesIO(data)
    already_read.read()  # a Streamlit upload read once before: loading starts from the beginning
    assert np.array_equal(np.asarray(load_image(already_read)), expected)
    with open(path, "rb") as handle:
        assert np.array_equal(np.asarray(load_image(handle)), expected)
        assert not handle.closed  # the caller's handle is the caller's to close


def test_non_seekable_stream_loads(catalogue):
    folder, entries = catalogue

    class Pipe:
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def read(self, size=-1):
            return self._data.read(size)

    assert load_image(Pipe((folder / entries["webp"].filename).read_bytes())).size == (64, 32)


def test_error_names_come_from_name_or_file_object(catalogue):
    folder, entries = catalogue
    junk = (folder / entries["not_an_image"].filename).read_bytes()
    with pytest.raises(BadImageError, match="upload-7.png"):
        load_image(junk, name="upload-7.png")
    named = io.BytesIO(junk)
    named.name = "/tmp/somewhere/from_form.jpg"
    with pytest.raises(BadImageError, match="from_form.jpg"):
        load_image(named)
    with pytest.raises(BadImageError, match="uploaded image"):
        load_image(b"")


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="nothing.jpg"):
        load_image(tmp_path / "nothing.jpg")


def test_known_but_unsupported_format_is_refused():
    ppm = io.BytesIO()
    Image.new("RGB", (4, 4)).save(ppm, format="PPM")
    with pytest.raises(BadImageError, match="not a readable"):
        load_image(ppm.getvalue(), name="x.ppm")


def test_hostile_names_stay_one_line_and_load(catalogue, tmp_path):
    folder, entries = catalogue
    with pytest.raises(BadImageError) as caught:
        load_image(b"junk", name="evil\nname\r.jpg")
    assert "\n" not in str(caught.value) and "evil" in str(caught.value)
    good = (folder / entries["rgb_jpeg"].filename).read_bytes()
    for hostile in HOSTILE_FILE_NAMES:
        (tmp_path / f"{hostile}.jpg").write_bytes(good)
        assert load_image(tmp_path / f"{hostile}.jpg").size == (64, 32)
        (tmp_path / f"{hostile}.png").write_bytes(b"")
        with pytest.raises(BadImageError) as caught:
            load_image(tmp_path / f"{hostile}.png")
        _assert_one_line_naming(caught.value, f"{hostile}.png")


def test_no_file_handle_left_open(catalogue):
    folder, entries = catalogue
    for entry in entries.values():
        if entry.filename != "huge.jpg":  # decoded elsewhere; skipping saves a second
            with contextlib.suppress(BadImageError):
                load_image(folder / entry.filename)
    still_open = [f.path for f in psutil.Process().open_files() if f.path.startswith(str(folder))]
    assert still_open == []


def test_truncated_images_are_never_allowed_globally():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("source", "keywords", "error", "parameter"),
    [
        (b"x", {"max_pixels": 0}, ValueError, "max_pixels"),
        (b"x", {"max_pixels": 10**12}, ValueError, "max_pixels"),
        (b"x", {"draft_size": 0}, ValueError, "draft_size"),
        (123, {}, TypeError, "source"),
    ],
)
def test_bad_arguments_name_the_parameter(source, keywords, error, parameter):
    with pytest.raises(error, match=parameter):
        load_image(source, **keywords)


def test_thumbnail_keeps_aspect_and_longest_side():
    thumb = Image.open(io.BytesIO(thumbnail_bytes(Image.new("RGB", (400, 100), (10, 200, 10)))))
    assert thumb.format == "WEBP" and thumb.size == (96, 24)
    tiny = Image.open(io.BytesIO(thumbnail_bytes(Image.new("RGB", (1, 1)), size=32, format="jpeg")))
    assert tiny.format == "JPEG" and tiny.size == (32, 32)
    with pytest.raises(ValueError, match="format"):
        thumbnail_bytes(Image.new("RGB", (4, 4)), format="NOPE")
    with pytest.raises(ValueError, match="size"):
        thumbnail_bytes(Image.new("RGB", (4, 4)), size=0)


def test_placeholder_is_grey_with_a_mark():
    image = placeholder_image(64)
    assert image.mode == "RGB" and image.size == (64, 64)
    values = np.asarray(image)
    assert np.all(values[..., 0] == values[..., 2])  # neutral grey, no colour
    assert len(np.unique(values)) >= 2  # the mark is visible against the background
    with pytest.raises(ValueError, match="size"):
        placeholder_image(2)


def test_upload_types_cover_the_catalogue(catalogue):
    _, entries = catalogue
    assert {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"} <= set(SUPPORTED_UPLOAD_TYPES)
    for entry in entries.values():
        if entry.expect_ok:
            assert Path(entry.filename).suffix.lstrip(".") in SUPPORTED_UPLOAD_TYPES
