"""Datasets: Oxford 17 on a small fake copy of the official layout, folder datasets, hostile paths."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from core.base import fileio
from core.base.errors import DatasetError, MissingFileError, UnsafePathError
from core.data import datasets
from core.data.datasets import OXFORD17_CLASSES, load_dataset, prepare_dataset, stratified_split


def _tiny_jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def _fake_oxford17(folder: Path) -> dict[str, str]:
    """Write 17flowers.tgz (1,360 tiny JPEGs under jpg/) and datasplits.mat as the VGG site ships them."""
    folder.mkdir(parents=True)
    with tarfile.open(folder / "17flowers.tgz", "w:gz") as tar:
        for i in range(1, 1361):
            data = _tiny_jpeg(((i - 1) // 80 * 15, 0, 0))
            info = tarfile.TarInfo(f"jpg/image_{i:04d}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    rng = np.random.default_rng(0)
    mat = {}
    for split in "123":
        trn, val, tst = [], [], []
        for c in range(17):
            ids = rng.permutation(np.arange(c * 80 + 1, c * 80 + 81))  # 1-based, as in MATLAB
            trn += list(ids[:40])
            val += list(ids[40:60])
            tst += list(ids[60:])
        mat[f"trn{split}"], mat[f"val{split}"], mat[f"tst{split}"] = (
            np.array(v, dtype=np.float64) for v in (trn, val, tst)
        )
    savemat(folder / "datasplits.mat", mat)
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in ("17flowers.tgz", "datasplits.mat")}


def test_oxford17_placed_by_hand_gives_official_labels_and_splits(workspace, monkeypatch):
    folder = workspace.data_root / "oxford17"
    checksums = _fake_oxford17(folder)
    monkeypatch.setattr(datasets, "OXFORD17_FILES", tuple((n, u, checksums[n]) for n, u, _ in datasets.OXFORD17_FILES))

    dataset = prepare_dataset("oxford17", workspace)

    assert dataset.class_names == OXFORD17_CLASSES and len(dataset.class_names) == 17
    assert len(dataset.image_paths) == 1360
    assert dataset.image_paths[0].name == "image_0001.jpg" and dataset.labels[0] == 0
    assert dataset.labels[79] == 0 and dataset.labels[80] == 1 and dataset.labels[1359] == 16
    assert dataset.class_names[dataset.labels[1280]] == "Pansy"
    assert sorted(dataset.splits) == ["1", "2", "3"]
    for split_id in "123":
        parts = dataset.split(split_id)
        assert [len(parts[p]) for p in ("train", "val", "test")] == [680, 340, 340]
        assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(1360))
        for rows in parts.values():
            assert np.all(np.bincount(dataset.labels[rows]) == len(rows) // 17)
    # 1-based MATLAB ids map to the right files: image id k is row k-1.
    mat_ids = __import__("scipy.io", fromlist=["loadmat"]).loadmat(folder / "datasplits.mat", squeeze_me=True)["tst2"]
    assert np.array_equal(dataset.split("2")["test"], np.sort(mat_ids.astype(int) - 1))
    # The red channel encodes the class in the fake images: labels match the pixels.
    assert Image.open(dataset.image_paths[1300]).getpixel((4, 4))[0] // 15 == pytest.approx(dataset.labels[1300], abs=1)


def test_oxford17_offline_error_names_both_files_and_folder(workspace, monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(fileio.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(fileio.time, "sleep", lambda seconds: None)  # the retries' back-off: 15 s of waiting otherwise
    with pytest.raises(MissingFileError) as excinfo:
        prepare_dataset("oxford17", workspace)
    message = str(excinfo.value)
    assert "17flowers.tgz" in message and "datasplits.mat" in message
    assert str(workspace.data_root / "oxford17") in message
    assert not list((workspace.data_root / "oxford17").glob("*.tgz")), "no partial download left behind"


def test_oxford17_wrong_checksum_is_refused(workspace):
    folder = workspace.data_root / "oxford17"
    _fake_oxford17(folder)  # real MD5s differ from the fakes'
    with pytest.raises(MissingFileError, match="MD5"):
        prepare_dataset("oxford17", workspace)


def _write_class_folder(root: Path, counts: dict[str, int]) -> None:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"{i}.jpg").write_bytes(_tiny_jpeg((i * 10 % 255, 50, 50)))


def test_folder_dataset_seeded_stratified_split(workspace):
    _write_class_folder(workspace.data_root / "mine", {"roses": 8, "tulips": 12})
    first = load_dataset("folder:mine", workspace)
    again = load_dataset("folder:mine", workspace)
    assert first.class_names == ("roses", "tulips")
    parts = first.split("1")
    assert [len(parts[p]) for p in ("train", "val", "test")] == [10, 5, 5]
    assert all(np.array_equal(parts[p], again.split("1")[p]) for p in parts)


def test_folder_listing_reports_progress_per_class_folder_up_to_the_image_count(workspace):
    _write_class_folder(workspace.data_root / "mine", {"roses": 4, "tulips": 5, "irises": 6})
    events = []
    load_dataset("folder:mine", workspace, progress=events.append)
    listing = [e for e in events if e.stage == "listing"]
    assert [e.done for e in listing] == [0, 0, 1, 2, 3] and {e.total for e in listing} == {3}
    assert listing[-1].message == "15 images listed"


def test_folder_dataset_explicit_parts(workspace):
    root = workspace.data_root / "explicit"
    for part, count in (("train", 3), ("valid", 2), ("test", 1)):
        _write_class_folder(root / part, {"a": count, "b": count})
    dataset = load_dataset("folder:explicit", workspace)
    assert [len(dataset.split("1")[p]) for p in ("train", "val", "test")] == [6, 4, 2]


@pytest.mark.parametrize(
    "counts, message",
    [({"only": 5}, "at least two"), ({"a": 5, "empty": 0}, "'empty'")],
)
def test_folder_dataset_bad_shapes_give_clear_errors(workspace, counts, message):
    _write_class_folder(workspace.data_root / "bad", counts)
    with pytest.raises(DatasetError, match=message):
        load_dataset("folder:bad", workspace)


@pytest.mark.parametrize("key", ["folder:../outside", "folder:/etc", "folder:link"])
def test_folder_dataset_outside_data_root_is_refused(workspace, tmp_path, key):
    _write_class_folder(tmp_path / "outside", {"a": 3, "b": 3})
    workspace.data_root.mkdir(parents=True, exist_ok=True)
    (workspace.data_root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(UnsafePathError, match="outside the data root"):
        load_dataset(key, workspace)


def test_fingerprint_changes_when_data_changes_and_only_then(workspace, tmp_path):
    import shutil

    mine = workspace.data_root / "mine"
    _write_class_folder(mine, {"a": 3, "b": 3})
    before = load_dataset("folder:mine", workspace).fingerprint
    # Moved away and back without file dates (cp -r, an unzip), then a file touched: the same data.
    shutil.move(mine, tmp_path / "away")
    shutil.copytree(tmp_path / "away", mine, copy_function=shutil.copyfile)
    os.utime(mine / "a" / "1.jpg", ns=(1, 1))
    assert (mine / "a" / "0.jpg").stat().st_mtime_ns != (tmp_path / "away" / "a" / "0.jpg").stat().st_mtime_ns
    assert load_dataset("folder:mine", workspace).fingerprint == before
    (mine / "a" / "0.jpg").write_bytes(_tiny_jpeg((1, 2, 3)) + b"\0")
    assert load_dataset("folder:mine", workspace).fingerprint != before


def test_stratified_split_validates_ratios():
    with pytest.raises(DatasetError, match="ratios"):
        stratified_split(np.zeros(10, dtype=int), ratios=(0.5, 0.5, 0.5))


def test_hostile_archive_members_are_refused(tmp_path):
    for name in ("../evil.txt", "/abs/evil.txt"):
        archive = tmp_path / "evil.tgz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        with pytest.raises(UnsafePathError, match="Refusing to extract"):
            fileio.safe_extract_tar(archive, tmp_path / "out")
        assert not (tmp_path / "evil.txt").exists() and not Path("/abs/evil.txt").exists()
