"""Synthetic Flowers: an offline demo dataset of 17 invented flower classes, generated in seconds.

No real flower photos can be downloaded on an offline machine, so Flower Probe can draw its own.
Each class is a made-up species defined by petal count, petal shape, a hue range (overlapping with
some other class, so colour alone does not separate them) and its centre. Every image varies pose,
tilt, scale, position, lighting, background clutter, occlusion and the number of flowers, so a
random-weight backbone does clearly worse than a pretrained one.

Layout written (Oxford-style split, 50 % / 25 % / 25 % per class)::

    <destination>/
        dataset.json                        name, seed, sizes, generator version, classes
        train/<Class Name>/<class-slug>_<nnn>.jpg
        val/<Class Name>/...
        test/<Class Name>/...

Every image comes from its own ``numpy.random.Generator`` seeded with ``(seed, class, index)``, so
the same arguments give byte-identical files (same platform and library versions) whatever the
number of threads drawing them.
"""

from __future__ import annotations

import colorsys
import io
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.base.errors import DatasetError
from core.base.fileio import atomic_write, disk_errors
from core.base.progress import ProgressCallback, RateMeter, report

DATASET_NAME = "Synthetic Flowers"
DEFAULT_DIRNAME = "synthetic-flowers"
MANIFEST_NAME = "dataset.json"
SPLITS = ("train", "val", "test")
# Bump whenever drawing changes: an existing folder with an older version is regenerated.
GENERATOR_VERSION = 1

_SUPERSAMPLE = 2  # draw at 2x and average 2x2 blocks: anti-aliased edges at PIL polygon speed
_JPEG_QUALITY = 90  # artefacts invisible to the backbones, about 17 kB per 256 px image
_MIN_IMAGES_PER_CLASS = 4  # the smallest count that leaves every split at least one image
_MAX_IMAGES_PER_CLASS = 10_000  # file names keep a fixed width of at most 4 digits
_MIN_IMAGE_SIZE = 32  # below this the petals are a few pixels and the classes meaningless
_MAX_IMAGE_SIZE = 2048  # the 2x drawing canvas stays under 50 MB
# Drawing is mostly Python holding the GIL (polygons, colours, small numpy calls): two threads drew 1,360 images
# in 10.0 s against 12.3 s for one on the 2-core reference CPU, two processes in ~6.5 s. The processes are plain
# ``python -m core.data.synthetic`` children, not a multiprocessing pool: its spawned and forkserver workers
# re-import the parent's ``__main__`` (inside the dashboard a page script, which must not run again), and forking
# the threaded dashboard is unsafe.
_MAX_WORKERS = 8  # beyond this the disk and the parent's bookkeeping, not drawing, set the pace
_IMAGES_PER_WORKER = 100  # a child costs ~0.25 s to start (numpy, Pillow): small sets draw in this process


@dataclass(frozen=True)
class FlowerClass:
    """One invented species; the numbers are relative to the flower's radius.

    ``hue`` is in degrees and may run past 360 to wrap through red. ``eye`` darkens the petal base
    (1.0 = none). ``skew`` bends petals sideways into a pinwheel.
    """

    name: str
    petals: int
    shape: str  # "ellipse", "pointed", "notched", "ray" or "round"
    width: float  # petal half-width / petal length
    hue: tuple[float, float]
    saturation: tuple[float, float]
    value: tuple[float, float]
    centre_size: float
    centre_rgb: tuple[int, int, int]
    centre_texture: str  # "solid", "dots", "ring" or "stamens"
    accent_rgb: tuple[int, int, int]  # dots, inner ring or stamen tips
    layers: int = 1
    eye: float = 1.0
    skew: float = 0.0


def _read_classes(path: Path) -> tuple[FlowerClass, ...]:
    """The ``[[flower]]`` tables of ``path``, TOML lists turned into the record's tuples."""
    with path.open("rb") as file:
        tables = tomllib.load(file)["flower"]
    return tuple(
        FlowerClass(**{key: tuple(value) if isinstance(value, list) else value for key, value in table.items()})
        for table in tables
    )


# The species are data, kept beside this file with every field named, so a class reads (and changes) in one place.
_CLASSES = _read_classes(Path(__file__).with_name("synthetic_classes.toml"))

SYNTHETIC_CLASS_NAMES: tuple[str, ...] = tuple(flower.name for flower in _CLASSES)


def class_slug(name: str) -> str:
    """``"Golden Ray"`` -> ``"golden-ray"``: the file-name prefix of a class's images."""
    return "-".join(name.lower().split())


def split_sizes(images_per_class: int) -> tuple[int, int, int]:
    """Train / val / test image counts per class: 50 % / 25 % / the rest (40/20/20 for 80)."""
    train = images_per_class // 2
    val = images_per_class // 4
    return train, val, images_per_class - train - val


def _split_of(index: int, images_per_class: int) -> str:
    train, val, _ = split_sizes(images_per_class)
    return SPLITS[0] if index < train else SPLITS[1] if index < train + val else SPLITS[2]


def _manifest(*, seed: int, images_per_class: int, image_size: int) -> dict:
    return {
        "name": DATASET_NAME,
        "synthetic": True,
        "seed": seed,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "generator_version": GENERATOR_VERSION,
        "classes": list(SYNTHETIC_CLASS_NAMES),
    }


# ---------------------------------------------------------------------------------------------
# Geometry: small pure helpers working on (n, 2) point arrays in pixels.


def _rotation(angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


def _tilt(squash: float, axis: float) -> np.ndarray:
    """Linear map that foreshortens by ``squash`` across direction ``axis``: a flower seen at an angle."""
    return _rotation(axis) @ np.diag([1.0, squash]) @ _rotation(-axis)


def _petal_outline(shape: str, width: float, skew: float, samples: int = 20) -> np.ndarray:
    """Closed outline of a unit-length petal along +x, base at the origin.

    Returns
    -------
    points : ndarray of shape (2 * samples, 2)
    """
    t = np.linspace(0.0, 1.0, samples)
    if shape == "pointed":
        # widest at about a third of the length, tapering to a sharp tip
        half = t**0.6 * (1.0 - t)
        half = half / half.max()
    elif shape == "ray":
        half = np.sqrt(np.clip(1.0 - (2.0 * t - 1.0) ** 8, 0.0, None)) * np.sqrt(t)
    elif shape == "notched":
        # heart: narrow base, widest near the tip, whose middle is then pulled in
        half = t**0.8 * np.sqrt(np.clip(1.0 - t**4, 0.0, None))
        half = half / half.max()
    else:  # ellipse, round
        half = np.sqrt(np.clip(1.0 - (2.0 * t - 1.0) ** 2, 0.0, None))
    x, y = t.copy(), width * half
    if shape == "notched":
        x = x - 0.28 * t**3 * np.exp(-((y / (0.4 * width)) ** 2))
    side = np.stack([x, y], axis=1)
    points = np.concatenate([side, side[::-1] * [1.0, -1.0]])
    points[:, 1] += skew * points[:, 0] ** 2
    return points


def _circle(samples: int = 28) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, samples, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _place(points: np.ndarray, linear: np.ndarray, centre: tuple[float, float]) -> list[tuple[float, float]]:
    placed = points @ linear.T + np.asarray(centre)
    return [tuple(p) for p in placed.tolist()]


# ---------------------------------------------------------------------------------------------
# Colour helpers.


def _unit(x: float) -> float:
    return min(1.0, max(0.0, x))  # np.clip on scalars costs more than the drawing it colours


def _hsv(hue_degrees: float, saturation: float, value: float) -> tuple[int, int, int]:
    rgb = colorsys.hsv_to_rgb((hue_degrees % 360.0) / 360.0, _unit(saturation), _unit(value))
    return tuple(int(round(255 * c)) for c in rgb)


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(255 * _unit(c * factor / 255)) for c in rgb)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], weight: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * weight)) for x, y in zip(a, b))


def _foliage(rng: np.random.Generator) -> tuple[int, int, int]:
    """A leaf green or an earth brown, the palette of background clutter."""
    if rng.random() < 0.7:
        return _hsv(rng.uniform(70, 140), rng.uniform(0.35, 0.8), rng.uniform(0.2, 0.65))
    return _hsv(rng.uniform(20, 45), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.55))


# ---------------------------------------------------------------------------------------------
# Drawing.


def _draw_leaf(draw: ImageDraw.ImageDraw, rng: np.random.Generator, centre, length: float, angle: float) -> None:
    colour = _foliage(rng)
    outline = _petal_outline("pointed", rng.uniform(0.18, 0.32), rng.uniform(-0.15, 0.15)) - [0.5, 0.0]
    linear = _rotation(angle) * length
    draw.polygon(_place(outline, linear, centre), fill=colour, outline=_shade(colour, 0.75))
    rib = np.array([[-0.5, 0.0], [0.45, 0.0]])
    draw.line(_place(rib, linear, centre), fill=_shade(colour, 1.3), width=max(1, int(length / 60)))


def _draw_background(rng: np.random.Generator, size: int) -> Image.Image:
    """Blurred foliage: a low-frequency colour field, leaves, stems and blobs, then depth-of-field blur."""
    cells = int(rng.integers(3, 7))
    field = np.array([[_foliage(rng) for _ in range(cells)] for _ in range(cells)], dtype=np.uint8)
    canvas = Image.fromarray(field).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):
        centre = rng.uniform(0, size, 2)
        radii = rng.uniform(0.04, 0.18, 2) * size
        draw.ellipse([*(centre - radii), *(centre + radii)], fill=_foliage(rng))
    for _ in range(int(rng.integers(1, 5))):
        start = rng.uniform(0, size, 2)
        end = start + rng.normal(0, 0.5, 2) * size
        draw.line([tuple(start), tuple(end)], fill=_foliage(rng), width=int(rng.uniform(0.008, 0.025) * size))
    for _ in range(int(rng.integers(4, 14))):
        _draw_leaf(draw, rng, tuple(rng.uniform(0, size, 2)), rng.uniform(0.12, 0.4) * size, rng.uniform(0, 2 * np.pi))
    return canvas


def _draw_centre(
    draw, rng: np.random.Generator, flower: FlowerClass, centre, radius: float, linear: np.ndarray
) -> None:
    disc = radius * flower.centre_size * rng.uniform(0.85, 1.15)
    base = _shade(flower.centre_rgb, rng.uniform(0.85, 1.1))
    if flower.centre_texture == "stamens":
        for angle in rng.uniform(0, 2 * np.pi, int(rng.integers(7, 14))):
            reach = disc * rng.uniform(1.6, 2.3)
            tip = np.array([[np.cos(angle), np.sin(angle)]]) * reach
            line = _place(np.vstack([[0.0, 0.0], tip]), linear, centre)
            draw.line(line, fill=_shade(flower.accent_rgb, 0.8), width=max(1, int(disc / 10)))
            head = np.array(line[1])
            dot = max(1.5, disc * 0.14)
            draw.ellipse([*(head - dot), *(head + dot)], fill=flower.accent_rgb)
    draw.polygon(_place(_circle() * disc, linear, centre), fill=base, outline=_shade(base, 0.7))
    if flower.centre_texture == "ring":
        draw.polygon(_place(_circle() * disc * 0.55, linear, centre), fill=flower.accent_rgb)
    elif flower.centre_texture == "dots":
        count = int(np.clip(disc * 0.9, 12, 90))
        index = np.arange(1, count + 1)
        angles = index * np.deg2rad(137.5)  # phyllotaxis, as seeds pack in a real flower head
        seeds = np.stack([np.cos(angles), np.sin(angles)], axis=1) * (0.88 * disc * np.sqrt(index / count))[:, None]
        dot = max(1.0, disc * 0.06)
        for seed_point in _place(seeds, linear, centre):
            draw.ellipse(
                [seed_point[0] - dot, seed_point[1] - dot, seed_point[0] + dot, seed_point[1] + dot],
                fill=flower.accent_rgb,
            )


def _draw_flower(draw, rng: np.random.Generator, flower: FlowerClass, centre, radius: float) -> None:
    """One flower of ``flower``'s class at a random pose, tilt and colour within the class's ranges."""
    linear = _tilt(rng.uniform(0.55, 1.0), rng.uniform(0, np.pi))
    hue = rng.uniform(*flower.hue)
    saturation = rng.uniform(*flower.saturation)
    value = rng.uniform(*flower.value)
    petals = flower.petals + (int(rng.integers(-2, 3)) if flower.petals >= 12 else 0)
    rotation = rng.uniform(0, 2 * np.pi)
    outline = _petal_outline(flower.shape, flower.width, flower.skew)
    band_scale = np.array([[1.0, 1.0], [0.62, 0.8], [0.38, 0.6]])  # nested bands: petal tip -> base shading
    for layer in range(flower.layers):
        length = radius * (1.0 - 0.28 * layer)
        layer_value = value * (1.0 - 0.08 * (flower.layers - 1 - layer))
        offset = rotation + layer * np.pi / petals
        for k in range(petals):
            angle = offset + 2 * np.pi * k / petals + rng.normal(0, 0.05)
            tip = _hsv(hue + rng.normal(0, 3), saturation, layer_value * rng.uniform(0.93, 1.05))
            base = _shade(tip, flower.eye * 0.92)
            petal_length = length * rng.uniform(0.88, 1.08)
            to_image = linear @ _rotation(angle) * petal_length
            for band, scale in enumerate(band_scale):
                colour = _mix(tip, base, band / (len(band_scale) - 1))
                edge = _shade(tip, 0.72) if band == 0 else None
                draw.polygon(_place(outline * scale, to_image, centre), fill=colour, outline=edge)
            if flower.shape != "ray":
                rib = np.array([[0.0, 0.0], [0.6, 0.6**2 * flower.skew]])  # follows the skewed centreline
                draw.line(_place(rib, to_image, centre), fill=_shade(tip, 0.86), width=max(1, int(radius / 70)))
    _draw_centre(draw, rng, flower, centre, radius, linear)


def _draw_stem(draw, rng: np.random.Generator, centre, radius: float, size: int) -> None:
    end = (centre[0] + rng.normal(0, 0.25) * size, size * 1.05)
    colour = _hsv(rng.uniform(85, 130), rng.uniform(0.5, 0.8), rng.uniform(0.3, 0.55))
    draw.line([tuple(centre), end], fill=colour, width=max(2, int(radius * rng.uniform(0.06, 0.11))))


def _apply_lighting(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, a directional light gradient, a colour cast and sensor noise."""
    pixels = np.asarray(image, dtype=np.float32)
    ramp = np.linspace(-1.0, 1.0, pixels.shape[0], dtype=np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(0.0, 0.3) * np.array([np.cos(direction), np.sin(direction)], dtype=np.float32)
    gradient = 1.0 + tilt[0] * ramp[None, :] + tilt[1] * ramp[:, None]
    # float32 scalars throughout: a float64 one would promote the whole image and double the cost
    contrast = np.float32(rng.uniform(0.75, 1.2))
    brightness = np.float32(rng.uniform(-25, 25))
    cast = (1.0 + rng.normal(0, 0.04, 3)).astype(np.float32)
    light = gradient[..., None] * cast  # (size, size, 3)
    noise = rng.standard_normal(pixels.shape[:2] + (1,), dtype=np.float32) * np.float32(rng.uniform(1.0, 5.0))
    pixels = pixels * (light * contrast) + light * (128.0 * (1.0 - contrast) + brightness) + (noise + 0.5)
    return Image.fromarray(np.clip(pixels, 0, 255, out=pixels).astype(np.uint8))


def render_flower_image(*, class_index: int, index: int, seed: int = 0, image_size: int = 256) -> Image.Image:
    """Draw image ``index`` of class ``class_index``: deterministic in ``(seed, class_index, index)``.

    Returns
    -------
    image : PIL RGB image of shape (image_size, image_size)
    """
    _check_int("class_index", class_index, 0, len(_CLASSES) - 1)
    flower = _CLASSES[class_index]
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, class_index, index])))
    # positions and radii are fractions of the image side, scaled to whichever layer draws them
    main_radius = rng.uniform(0.2, 0.4)
    main_centre = rng.uniform(0.32, 0.68, 2)
    extras = [
        (rng.uniform(0.05, 0.95, 2), main_radius * rng.uniform(0.4, 0.75), rng.random() < 0.5)
        for _ in range(int(rng.choice([0, 1, 2], p=[0.6, 0.3, 0.1])))
    ]
    # the background is blurred anyway, so it is drawn and blurred at 1x and only then enlarged
    background = _draw_background(rng, image_size)
    draw = ImageDraw.Draw(background)
    for centre, radius, far in extras:
        if far:  # out of focus, behind the main flower
            _draw_flower(draw, rng, flower, tuple(centre * image_size), radius * image_size)
    background = background.filter(ImageFilter.GaussianBlur(rng.uniform(0.7, 2.5) * image_size / 256))
    size = image_size * _SUPERSAMPLE
    # nearest-neighbour doubling is undone exactly by the final 2x2 reduce: the background comes
    # back pixel for pixel, only the sharp drawing on top gets supersampled
    canvas = background.resize((size, size), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for centre, radius, far in extras:
        if not far:
            _draw_flower(draw, rng, flower, tuple(centre * size), radius * size)
    if rng.random() < 0.6:
        _draw_stem(draw, rng, main_centre * size, main_radius * size, size)
    _draw_flower(draw, rng, flower, tuple(main_centre * size), main_radius * size)
    if rng.random() < 0.35:  # a foreground leaf hides part of the flower
        direction = rng.uniform(0, 2 * np.pi)
        offset = np.array([np.cos(direction), np.sin(direction)]) * rng.uniform(0.6, 1.1)
        leaf_centre = tuple((main_centre + offset * main_radius) * size)
        _draw_leaf(draw, rng, leaf_centre, main_radius * size * rng.uniform(0.9, 1.5), rng.uniform(0, 2 * np.pi))
    image = canvas.reduce(_SUPERSAMPLE)
    return _apply_lighting(image, rng)


def _render_jpeg(*, seed: int, class_index: int, index: int, image_size: int) -> bytes:
    image = render_flower_image(class_index=class_index, index=index, seed=seed, image_size=image_size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# The dataset.


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DatasetError(f"{name} must be an integer from {low} to {high}; got {value!r}.")


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _image_path(root: Path, class_index: int, index: int, images_per_class: int) -> Path:
    name = SYNTHETIC_CLASS_NAMES[class_index]
    digits = max(3, len(str(images_per_class - 1)))
    return root / _split_of(index, images_per_class) / name / f"{class_slug(name)}_{index:0{digits}d}.jpg"


# ---------------------------------------------------------------------------------------------
# Drawing the files: in this process, or in child processes each drawing every k-th image.


def _draw_file(root: Path, *, seed: int, class_index: int, index: int, images_per_class: int, image_size: int) -> None:
    jpeg = _render_jpeg(seed=seed, class_index=class_index, index=index, image_size=image_size)
    _image_path(root, class_index, index, images_per_class).write_bytes(jpeg)


def _images(images_per_class: int) -> list[tuple[int, int]]:
    """Every ``(class_index, index)`` of the dataset, in the order images are drawn."""
    return [(c, i) for c in range(len(_CLASSES)) for i in range(images_per_class)]


def default_workers(n_images: int) -> int:
    """Processes drawing ``n_images``: one per core this process may use, fewer for small sets (1: no child)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, _MAX_WORKERS, n_images // _IMAGES_PER_WORKER))


_CHILD_MODULE = "core.data.synthetic"  # run as ``python -m`` by _draw_in_children; its ``__main__`` block draws
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the child's working folder, wherever the dashboard was started


def _child_failure(errors, returncode: int) -> Exception:
    """The exception a child's last stderr line describes: its ``OSError`` (a full disk, ...) or a DatasetError."""
    errors.seek(0)
    lines = errors.read().decode("utf-8", "replace").strip().splitlines()
    try:
        described = json.loads(lines[-1]) if lines else {}
    except ValueError:
        described = {}
    if isinstance(described, dict) and "errno" in described:
        return OSError(described["errno"], described["strerror"], described["filename"])
    return DatasetError(
        f"a process drawing Synthetic Flowers stopped (exit code {returncode}): {lines[-1] if lines else 'no message'}"
    )


_DRAWN = -1  # what _relay puts on the queue per image; at the end it puts the child's index


def _relay(stream, finished: queue.SimpleQueue, child_index: int) -> None:
    """Put ``_DRAWN`` on ``finished`` per image a child reports (a line each), then ``child_index`` when it is done."""
    with stream:
        for _line in stream:
            finished.put(_DRAWN)
    finished.put(child_index)


def _draw_in_children(
    root: Path, *, seed: int, images_per_class: int, image_size: int, workers: int, on_image: Callable[[], None]
) -> None:
    """Draw every image under ``root`` in ``workers`` child processes; ``on_image()`` after each one.

    An exception from ``on_image`` (a cancel) kills the children; a child's failure is raised here.
    """
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # each child is one core's worth of drawing; numpy's few matrix products stay on it
        "OPENBLAS_NUM_THREADS": "1",
    }
    finished: queue.SimpleQueue = queue.SimpleQueue()
    children: list[tuple[subprocess.Popen, object]] = []
    with ExitStack() as stack:
        stack.callback(_stop, children)  # on any way out: no child outlives the call
        for first in range(workers):
            errors = stack.enter_context(tempfile.TemporaryFile())  # a file: a long traceback never blocks the child
            arguments = [root.resolve(), seed, images_per_class, image_size, first, workers]
            child = subprocess.Popen(
                [sys.executable, "-m", _CHILD_MODULE, *map(str, arguments)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                cwd=_PROJECT_ROOT,  # ``-m`` looks in the working folder first: this project's ``core``, not another
            )
            threading.Thread(target=_relay, args=(child.stdout, finished, len(children)), daemon=True).start()
            children.append((child, errors))
        drawn, exited = 0, 0
        while exited < workers:
            item = finished.get()
            if item == _DRAWN:
                drawn += 1
                on_image()
                continue
            exited += 1
            child, errors = children[item]
            if child.wait() != 0:  # its output has ended: it is exiting, or has
                raise _child_failure(errors, child.returncode)
        if drawn != len(_images(images_per_class)):
            raise DatasetError(f"the processes drawing Synthetic Flowers drew {drawn} images, not all of them")


def _stop(children: list[tuple[subprocess.Popen, object]]) -> None:
    """Kill the children still drawing (a cancel, an error) and reap them all."""
    for child, _errors in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def _child_main(arguments: list[str]) -> None:
    """``python -m core.data.synthetic ROOT SEED IMAGES_PER_CLASS IMAGE_SIZE FIRST STEP``: draw every STEP-th image
    from FIRST into the folders under ROOT (the parent made them), writing a line to stdout after each."""
    root, (seed, images_per_class, image_size, first, step) = Path(arguments[0]), map(int, arguments[1:])
    try:
        for class_index, index in _images(images_per_class)[first::step]:
            _draw_file(
                root,
                seed=seed,
                class_index=class_index,
                index=index,
                images_per_class=images_per_class,
                image_size=image_size,
            )
            sys.stdout.write("\n")
            sys.stdout.flush()
    except OSError as exc:  # the parent rebuilds it, so a full disk reads the same as in one process
        sys.stderr.write(json.dumps({"errno": exc.errno, "strerror": exc.strerror, "filename": exc.filename}) + "\n")
        sys.exit(1)


def _check_replaceable(destination: Path) -> None:
    """Refuse to overwrite anything but an empty folder or an earlier Synthetic Flowers dataset."""
    if not destination.exists():
        return
    foreign = not destination.is_dir() or (
        (_read_manifest(destination) or {}).get("synthetic") is not True and any(destination.iterdir())
    )
    if foreign:
        raise DatasetError(
            f"destination {destination} already exists and is not a Synthetic Flowers dataset; "
            f"choose a new or empty folder."
        )


def _install(staging: Path, destination: Path, token: str) -> None:
    """Move the finished ``staging`` folder onto ``destination`` by renaming, retiring any old version."""
    if destination.exists():
        retired = destination.parent / f".{destination.name}.old-{token}"
        os.replace(destination, retired)
        os.replace(staging, destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, destination)


def generate_synthetic_flowers(
    destination: Path,
    *,
    seed: int = 0,
    images_per_class: int = 80,
    image_size: int = 256,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write the Synthetic Flowers dataset to ``destination`` and return it.

    Parameters
    ----------
    destination : Path
        Folder to create. If it already holds this exact dataset (same ``dataset.json``) nothing is
        done; an older Synthetic Flowers dataset there is replaced; any other non-empty folder is refused.
    seed : int
        Same seed, same bytes.
    images_per_class : int
        Split 50 % / 25 % / 25 % into train / val / test (40 / 20 / 20 for the default 80).
    image_size : int
        Side of the square images in pixels.
    workers : int or None
        Processes drawing images (``None``: ``default_workers``, one per core for large sets; 1 draws in this
        process). The output does not depend on it.
    progress : ProgressCallback or None
        Receives ``"generate"`` events, one per image.

    Images are drawn into a hidden sibling folder that is renamed onto ``destination`` only when
    complete, so an interrupted run never leaves a dataset that looks finished.
    """
    _check_int("seed", seed, 0, 2**63 - 1)
    _check_int("images_per_class", images_per_class, _MIN_IMAGES_PER_CLASS, _MAX_IMAGES_PER_CLASS)
    _check_int("image_size", image_size, _MIN_IMAGE_SIZE, _MAX_IMAGE_SIZE)
    if workers is not None:
        _check_int("workers", workers, 1, 64)
    destination = Path(destination)
    manifest = _manifest(seed=seed, images_per_class=images_per_class, image_size=image_size)
    if _read_manifest(destination) == manifest:
        return destination
    _check_replaceable(destination)

    total = len(_CLASSES) * images_per_class
    workers = workers or default_workers(total)
    token = f"{os.getpid()}-{threading.get_ident()}"  # unique per caller: two dashboard sessions may race
    staging = destination.parent / f".{destination.name}.tmp-{token}"
    meter, drawn = RateMeter(), [0]

    def on_image() -> None:
        drawn[0] += 1
        report(progress, "generate", drawn[0], total, message=f"{drawn[0]}/{total} images", rate=meter.rate(drawn[0]))

    report(progress, "generate", 0, total, message=f"Drawing {total} synthetic flower images")
    try:
        with disk_errors(destination):
            shutil.rmtree(staging, ignore_errors=True)
            for split in SPLITS:
                for name in SYNTHETIC_CLASS_NAMES:
                    (staging / split / name).mkdir(parents=True)
            sizes = {"seed": seed, "images_per_class": images_per_class, "image_size": image_size}
            if workers == 1:
                for class_index, index in _images(images_per_class):
                    _draw_file(staging, class_index=class_index, index=index, **sizes)
                    on_image()
            else:
                _draw_in_children(staging, workers=workers, on_image=on_image, **sizes)
            with atomic_write(staging / MANIFEST_NAME) as tmp:
                tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            if _read_manifest(destination) != manifest:  # another process may have finished the same dataset meanwhile
                _check_replaceable(destination)
                _install(staging, destination, token)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


if __name__ == "__main__":
    _child_main(sys.argv[1:])
