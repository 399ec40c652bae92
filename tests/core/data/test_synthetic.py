"""Tests for core.data.synthetic: the offline Synthetic Flowers demo dataset.

Small images (4 per class, 64 px) keep every generation well under a second.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.base.errors import CancelledError, DatasetError
from core.data.synthetic import (
    _CLASSES,  # the class definitions, to derive which classes share colours independently of any rendering
    DEFAULT_DIRNAME,
    GENERATOR_VERSION,
    SPLITS,
    SYNTHETIC_CLASS_NAMES,
    FlowerClass,
    _child_failure,  # the parent's reading of a drawing process's last words
    class_slug,
    default_workers,
    generate_synthetic_flowers,
    render_flower_image,
    split_sizes,
)

SMALL = {"images_per_class": 4, "image_size": 64}


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return generate_synthetic_flowers(tmp_path_factory.mktemp("data") / DEFAULT_DIRNAME, seed=0, **SMALL)


def test_class_names_are_short_distinct_and_filesystem_safe():
    assert len(SYNTHETIC_CLASS_NAMES) == 17
    assert len(set(SYNTHETIC_CLASS_NAMES)) == 17
    assert len({class_slug(name) for name in SYNTHETIC_CLASS_NAMES}) == 17
    for name in SYNTHETIC_CLASS_NAMES:
        assert re.fullmatch(r"[A-Z][a-z]+( [A-Z][a-z]+)*", name), name
        assert len(name) <= 20, name
    assert class_slug("Golden Ray") == "golden-ray"
    assert DEFAULT_DIRNAME == "synthetic-flowers"


@pytest.mark.parametrize(
    ("per_class", "expected"), [(80, (40, 20, 20)), (4, (2, 1, 1)), (7, (3, 1, 3)), (10, (5, 2, 3))]
)
def test_split_sizes_follow_the_oxford_proportions(per_class, expected):
    assert split_sizes(per_class) == expected
    assert sum(split_sizes(per_class)) == per_class


def test_layout_and_counts_per_split(small_dataset):
    assert sorted(p.name for p in small_dataset.iterdir()) == ["dataset.json", *sorted(SPLITS)]
    for split, count in zip(SPLITS, split_sizes(SMALL["images_per_class"])):
        assert sorted(p.name for p in (small_dataset / split).iterdir()) == sorted(SYNTHETIC_CLASS_NAMES)
        for name in SYNTHETIC_CLASS_NAMES:
            files = sorted(p.name for p in (small_dataset / split / name).iterdir())
            assert len(files) == count, (split, name, files)
            assert all(re.fullmatch(rf"{class_slug(name)}_\d{{3}}\.jpg", f) for f in files), files
    # every index appears exactly once across the splits, train first
    golden = [p.name for split in SPLITS for p in sorted((small_dataset / split / "Golden Ray").iterdir())]
    assert golden == [f"golden-ray_{i:03d}.jpg" for i in range(4)]
    assert [p.name for p in small_dataset.parent.iterdir()] == [DEFAULT_DIRNAME], "staging folder left behind"


def test_manifest_describes_the_dataset(small_dataset):
    manifest = json.loads((small_dataset / "dataset.json").read_text(encoding="utf-8"))
    assert manifest == {
        "name": "Synthetic Flowers",
        "synthetic": True,
        "seed": 0,
        "images_per_class": 4,
        "image_size": 64,
        "generator_version": GENERATOR_VERSION,
        "classes": list(SYNTHETIC_CLASS_NAMES),
    }


def test_images_decode_as_rgb_jpegs_of_the_requested_size(small_dataset):
    paths = sorted(small_dataset.rglob("*.jpg"))
    assert len(paths) == 17 * 4
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert image.size == (64, 64)
            assert np.asarray(image).std() > 10, f"{path} is nearly blank"


def test_same_seed_gives_identical_bytes_whatever_the_process_count(tmp_path, small_dataset):
    # small_dataset is drawn in this process (default_workers gives 1 for 68 images); 2 and 3 child processes each
    # draw every 2nd or 3rd image: the same bytes.
    assert default_workers(17 * SMALL["images_per_class"]) == 1
    for workers in (2, 3):
        again = generate_synthetic_flowers(tmp_path / f"again-{workers}", seed=0, workers=workers, **SMALL)
        assert _files(again) == _files(small_dataset)


def test_drawing_processes_write_where_a_relative_destination_points(tmp_path, monkeypatch, small_dataset):
    monkeypatch.chdir(tmp_path)  # the children run in the project's folder: a relative path must still land here
    generate_synthetic_flowers(Path("relative") / DEFAULT_DIRNAME, seed=0, workers=2, **SMALL)
    assert _files(tmp_path / "relative" / DEFAULT_DIRNAME) == _files(small_dataset)


def test_large_sets_are_drawn_by_one_process_per_core(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert [default_workers(n) for n in (68, 199, 1360, 100_000)] == [1, 1, 2, 2]


def test_cancelling_stops_the_drawing_processes(tmp_path):
    children = []

    def cancel_midway(event):
        if event.done == 20:
            children.extend(_drawing_children())
            raise CancelledError("cancelled by the user")

    with pytest.raises(CancelledError):
        generate_synthetic_flowers(tmp_path / DEFAULT_DIRNAME, progress=cancel_midway, workers=2, **SMALL)
    assert list(tmp_path.iterdir()) == [], "no dataset and no staging folder may remain"
    assert children, "the images were not drawn by child processes"
    assert [pid for pid in children if Path(f"/proc/{pid}").exists()] == [], "a drawing process outlived the call"


def _drawing_children() -> list[int]:
    """This process's children running the drawing module (Linux: /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(os.getpid()) and "core.data.synthetic" in command:
            found.append(int(status.parent.name))
    return found


def test_a_failing_drawing_process_is_reported_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("core.data.synthetic._CHILD_MODULE", "core.data.no_such_module")
    stopped = r"a process drawing Synthetic Flowers stopped \(exit code 1\): .*no_such_module"
    with pytest.raises(DatasetError, match=stopped):
        generate_synthetic_flowers(tmp_path / DEFAULT_DIRNAME, workers=2, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_a_drawing_process_reads_as_in_this_process():
    full = {"errno": errno.ENOSPC, "strerror": "No space left", "filename": "x.jpg"}
    with tempfile.TemporaryFile() as errors:
        errors.write(b"some warning\n" + json.dumps(full).encode())
        failure = _child_failure(errors, 1)
        assert isinstance(failure, OSError) and failure.errno == errno.ENOSPC and failure.filename == "x.jpg"
        errors.seek(0)
        errors.truncate()
        errors.write(b"Traceback ...\nZeroDivisionError: division by zero\n")
        assert str(_child_failure(errors, 1)).endswith("(exit code 1): ZeroDivisionError: division by zero")


def test_different_seed_gives_different_images(tmp_path, small_dataset):
    other = _files(generate_synthetic_flowers(tmp_path / "other", seed=1, **SMALL))
    reference = _files(small_dataset)
    assert other.keys() == reference.keys()
    images = [key for key in reference if key.endswith(".jpg")]
    assert all(other[key] != reference[key] for key in images)


def test_generation_is_idempotent(tmp_path):
    destination = tmp_path / DEFAULT_DIRNAME
    generate_synthetic_flowers(destination, **SMALL)
    before = {path: path.stat().st_mtime_ns for path in destination.rglob("*")}
    events = []
    assert generate_synthetic_flowers(destination, progress=events.append, **SMALL) == destination
    assert events == [], "an existing identical dataset must not be redrawn"
    assert {path: path.stat().st_mtime_ns for path in destination.rglob("*")} == before


def test_other_parameters_replace_an_earlier_synthetic_dataset(tmp_path):
    destination = tmp_path / DEFAULT_DIRNAME
    generate_synthetic_flowers(destination, **SMALL)
    generate_synthetic_flowers(destination, images_per_class=8, image_size=48)
    assert json.loads((destination / "dataset.json").read_text())["images_per_class"] == 8
    assert len(list(destination.rglob("*.jpg"))) == 17 * 8
    with Image.open(next(destination.rglob("*.jpg"))) as image:
        assert image.size == (48, 48)
    assert [p.name for p in tmp_path.iterdir()] == [DEFAULT_DIRNAME]


def test_refuses_to_overwrite_a_folder_that_is_not_synthetic(tmp_path):
    destination = tmp_path / "my-photos"
    destination.mkdir()
    (destination / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(DatasetError, match="not a Synthetic Flowers dataset"):
        generate_synthetic_flowers(destination, **SMALL)
    assert (destination / "holiday.jpg").read_bytes() == b"precious"


def test_fills_an_existing_empty_folder(tmp_path):
    destination = tmp_path / "empty"
    destination.mkdir()
    generate_synthetic_flowers(destination, **SMALL)
    assert len(list(destination.rglob("*.jpg"))) == 17 * 4


def test_progress_counts_every_image(tmp_path):
    events = []
    generate_synthetic_flowers(tmp_path / "d", progress=events.append, **SMALL)
    assert {event.stage for event in events} == {"generate"}
    assert [event.done for event in events] == list(range(17 * 4 + 1))
    assert all(event.total == 17 * 4 for event in events)


def test_cancelled_generation_leaves_nothing_that_looks_complete(tmp_path):
    def cancel_midway(event):
        if event.done == 20:
            raise CancelledError("cancelled by the user")

    with pytest.raises(CancelledError):
        generate_synthetic_flowers(tmp_path / DEFAULT_DIRNAME, progress=cancel_midway, **SMALL)
    assert list(tmp_path.iterdir()) == [], "no dataset and no staging folder may remain"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"images_per_class": 3}, "images_per_class"),
        ({"images_per_class": 4.0}, "images_per_class"),
        ({"image_size": 16}, "image_size"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"workers": 0}, "workers"),
    ],
)
def test_rejects_bad_parameters_naming_them(tmp_path, kwargs, parameter):
    with pytest.raises(DatasetError, match=rf"{parameter} must be an integer from .*; got"):
        generate_synthetic_flowers(tmp_path / "d", **{**SMALL, **kwargs})
    assert not (tmp_path / "d").exists()


def test_render_is_deterministic_and_depends_on_class_and_index():
    first = np.asarray(render_flower_image(class_index=3, index=5, seed=7, image_size=64))
    assert np.array_equal(first, np.asarray(render_flower_image(class_index=3, index=5, seed=7, image_size=64)))
    assert not np.array_equal(first, np.asarray(render_flower_image(class_index=4, index=5, seed=7, image_size=64)))
    assert not np.array_equal(first, np.asarray(render_flower_image(class_index=3, index=6, seed=7, image_size=64)))


def _colour_signature(image: Image.Image) -> np.ndarray:
    """Hue histogram weighted by saturation x value, plus a brightness histogram: colour only, no shape."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32) / 255.0
    hue, _ = np.histogram(hsv[..., 0], bins=24, range=(0, 1), weights=hsv[..., 1] * hsv[..., 2])
    value, _ = np.histogram(hsv[..., 2], bins=8, range=(0, 1))
    return np.concatenate([hue / hue.sum(), value / value.sum()])


def _shares_colour(a: FlowerClass, b: FlowerClass) -> bool:
    """Whether two class definitions' petal colours can coincide: overlapping hue ranges (either way round
    the colour wheel), or both nearly unsaturated (white petals, whatever their nominal hue)."""
    white_a, white_b = a.saturation[1] <= 0.15, b.saturation[1] <= 0.15
    if white_a or white_b:
        return white_a and white_b
    return any(max(a.hue[0] + turn, b.hue[0]) <= min(a.hue[1] + turn, b.hue[1]) for turn in (-360, 0, 360))


def test_classes_differ_in_colour_but_colour_alone_does_not_separate_them():
    from scipy.stats import binomtest

    classes = len(SYNTHETIC_CLASS_NAMES)
    # The design (core.data.synthetic): every class's colour range is shared by some other class.
    assert all(any(_shares_colour(a, b) for b in _CLASSES if b is not a) for a in _CLASSES)
    signatures = np.array(
        [
            [_colour_signature(render_flower_image(class_index=c, index=i, image_size=64)) for i in range(16)]
            for c in range(classes)
        ]
    )  # (classes, images, bins)
    centroids = signatures[:, :10].mean(axis=1)
    distances = ((signatures[:, 10:, None, :] - centroids[None, None]) ** 2).sum(axis=-1)
    predicted = distances.argmin(axis=-1)  # (classes, 6): a nearest-centroid classifier on colour alone
    correct = int((predicted == np.arange(classes)[:, None]).sum())
    # Colour carries class information: far above chance (1/17) for these 102 images.
    assert binomtest(correct, predicted.size, 1 / classes, alternative="greater").pvalue < 1e-6, correct
    # ...but does not separate the classes: it makes mistakes, and most of them go to a class whose colour range
    # overlaps the true one, the overlap the design put there (the rest is left to shape).
    mistakes = [(true, int(guess)) for true in range(classes) for guess in predicted[true] if guess != true]
    overlapping = sum(_shares_colour(_CLASSES[true], _CLASSES[guess]) for true, guess in mistakes)
    assert mistakes and overlapping > len(mistakes) / 2, (overlapping, len(mistakes))
