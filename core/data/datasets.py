"""Datasets: Oxford 17 flowers, any folder-per-class dataset under the data root, and Synthetic Flowers.

Every dataset becomes one ``Dataset`` record: image paths, integer labels, class names in dataset
order, and one or more named splits (train/val/test index arrays). A fingerprint over the file list
and contents lets the feature cache and the runs notice when the data changed.

Dataset keys, as the CLI and the pages spell them:
    ``oxford17``         the VGG Oxford 17-category flowers, three official splits "1", "2", "3"
    ``synthetic``        the generated offline demo set (Synthetic Flowers), one split "1"
    ``folder:<name>``    ``<data root>/<name>``: class = subfolder; explicit train/val/test subfolders,
                         or a seeded stratified split (50/25/25 by default), one split "1"
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.base.errors import DatasetError, MissingFileError, UnsafePathError
from core.base.fileio import contained_path, download, file_digest, file_digests, remembered, safe_extract_tar
from core.base.progress import ProgressCallback, report
from core.base.workspace import Workspace

SPLIT_PARTS = ("train", "val", "test")
# The split every experiment, page and command starts from: Oxford 17's first official split, and the only split of
# every other dataset (Synthetic Flowers, folders).
DEFAULT_SPLIT = "1"
# In the workspace root: file digests per (path, size, mtime), so repeat fingerprints of big folders only stat.
DIGEST_CACHE_NAME = "digests.sqlite"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"})

OXFORD17_KEY = "oxford17"
OXFORD17_DIRNAME = "oxford17"
OXFORD17_CLASSES = (
    "Daffodil",
    "Snowdrop",
    "Lily Valley",
    "Bluebell",
    "Crocus",
    "Iris",
    "Tigerlily",
    "Tulip",
    "Fritillary",
    "Sunflower",
    "Daisy",
    "Colts' Foot",
    "Dandelion",
    "Cowslip",
    "Buttercup",
    "Windflower",
    "Pansy",
)
OXFORD17_IMAGES_PER_CLASS = 80
OXFORD17_IMAGES = (
    17 * OXFORD17_IMAGES_PER_CLASS
)  # its size, and Synthetic Flowers' by default, before either is prepared
# (file name, URL, MD5): the MD5s are those a public torchvision-style loader lists (shared/reference).
OXFORD17_FILES = (
    (
        "17flowers.tgz",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz",
        "b59a65d8d1a99cd66944d474e1289eab",
    ),
    (
        "datasplits.mat",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/datasplits.mat",
        "4828cddfd0d803c5abbdebcb1e148a1e",
    ),
)
SYNTHETIC_KEY = "synthetic"
FOLDER_PREFIX = "folder:"
# Aliases users give their validation folder; the first one present wins.
_VAL_FOLDER_NAMES = ("val", "valid", "validation")


@dataclass(frozen=True)
class Dataset:
    key: str
    name: str
    root: Path
    class_names: tuple[str, ...]
    image_paths: tuple[Path, ...]
    labels: np.ndarray  # shape (n_images,), int64 index into class_names
    splits: dict[str, dict[str, np.ndarray]]  # split id -> {"train"|"val"|"test": row indices}
    synthetic: bool = False
    # Paths (relative to root, POSIX) the user excluded (core.data.exclusions): left out of every list above.
    excluded: tuple[str, ...] = field(default=())
    # SQLite file remembering file digests per (path, size, mtime), so a repeat fingerprint only stats files.
    digest_cache: Path | None = field(default=None, compare=False, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def fingerprint(self) -> str:
        """Hash of relative paths, labels and file contents: changes when the data does, and only then.

        Contents, not modification times, so a workspace copied without its file dates (``cp -r``,
        an unzip, a git checkout) keeps its feature caches and runs. Each file is read once per
        process, and once at all while unchanged when ``digest_cache`` is set (``file_digests``);
        later calls only ``stat`` the files.
        """
        return self.compute_fingerprint()

    def compute_fingerprint(self, *, progress: ProgressCallback | None = None) -> str:
        """``fingerprint``, with "fingerprint" progress events (100k files take a while the first time).

        With a ``digest_cache``, a folder whose every (path, label, size, mtime) is as last time gets its
        fingerprint back from the cache after one ``stat`` per file; otherwise file contents decide.
        """
        relative = self._relative_paths()
        labels = self.labels.tolist()

        def by_content() -> str:
            digest = hashlib.sha256(self.key.encode())
            contents = file_digests(self.image_paths, cache_path=self.digest_cache, progress=progress)
            for path, label, content in zip(relative, labels, contents, strict=True):
                digest.update(f"{path}\0{label}\0{content}\n".encode())
            return digest.hexdigest()[:16]

        if self.digest_cache is None:
            return by_content()
        listing = hashlib.sha256(f"{self.key}\0{self.root}".encode())
        for path, text, label in zip(self.image_paths, relative, labels, strict=True):
            stat = os.stat(path)
            listing.update(f"{text}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return remembered(self.digest_cache, listing.hexdigest(), by_content)

    def _relative_paths(self) -> list[str]:
        root = f"{self.root}{os.sep}"
        # Slicing the root off: Path.relative_to costs 10x more, which 100k files feel.
        return [
            text[len(root) :] if (text := str(path)).startswith(root) else str(path.relative_to(self.root))
            for path in self.image_paths
        ]

    def split(self, split_id: str) -> dict[str, np.ndarray]:
        if split_id not in self.splits:
            raise DatasetError(f"split must be one of {sorted(self.splits)} for {self.name}, got {split_id!r}.")
        return self.splits[split_id]


# ----------------------------------------------------------------------------------------------- helpers


def stratified_split(
    labels: np.ndarray, *, ratios: tuple[float, float, float] = (0.5, 0.25, 0.25), seed: int = 0
) -> dict[str, np.ndarray]:
    """Split row indices per class by ``ratios`` (train, val, test), shuffled with ``seed``.

    Every class gets at least one image in each part, so a class needs at least three images.
    """
    if len(ratios) != 3 or any(r <= 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise DatasetError(f"ratios must be three positive numbers summing to 1 (train, val, test), got {ratios!r}.")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {part: [] for part in SPLIT_PARTS}
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_val = max(1, round(len(rows) * ratios[1]))
        n_test = max(1, round(len(rows) * ratios[2]))
        n_train = len(rows) - n_val - n_test
        parts["train"].append(rows[:n_train])
        parts["val"].append(rows[n_train : n_train + n_val])
        parts["test"].append(rows[n_train + n_val :])
    return {part: np.sort(np.concatenate(chunks)) for part, chunks in parts.items()}


def _image_files(folder: Path) -> list[os.DirEntry]:
    # os.scandir: each entry's type comes with the listing (no stat but for links), and names sort as strings,
    # which at 100k files is 10x faster than comparing Path objects.
    with os.scandir(folder) as entries:
        return sorted(
            (
                e
                for e in entries
                if not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                and e.is_file()
            ),
            key=lambda e: e.name,
        )


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _inside(folder: Path, path: Path) -> Path:
    """``path`` resolved; refused when a symlink leads it out of ``folder`` (pages would show any file it names)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise UnsafePathError(
            f"{path} links to {resolved}, outside the dataset folder {folder.resolve()}. "
            f"Copy the images into the dataset folder instead of linking to them."
        )
    return resolved


def _check_classes(name: str, counts: dict[str, int], *, minimum: int) -> None:
    if len(counts) < 2:
        raise DatasetError(
            f"{name} has {len(counts)} class folder(s); a classifier needs at least two. "
            f"Put each class's images in its own subfolder."
        )
    too_small = [cls for cls, count in counts.items() if count < minimum]
    if too_small:
        raise DatasetError(
            f"{name}: class folder(s) {', '.join(repr(c) for c in too_small)} have fewer than {minimum} images "
            f"(jpg, png, webp, ...). Add images or remove those folders."
        )


# ----------------------------------------------------------------------------------------------- folders


def load_folder_dataset(
    folder: Path,
    *,
    key: str,
    name: str,
    ratios: tuple[float, float, float] = (0.5, 0.25, 0.25),
    seed: int = 0,
    synthetic: bool = False,
    progress: ProgressCallback | None = None,
) -> Dataset:
    """Read a folder-per-class dataset; explicit train/val/test subfolders win over a seeded split.

    ``progress`` receives ``"listing"`` events, one per class folder listed (100k files take seconds).
    """
    if not folder.is_dir():
        raise DatasetError(f"Dataset folder {folder} does not exist.")
    val_dir = next((folder / n for n in _VAL_FOLDER_NAMES if (folder / n).is_dir()), None)
    explicit = (folder / "train").is_dir() and (folder / "test").is_dir() and val_dir is not None
    part_dirs = {"train": folder / "train", "val": val_dir, "test": folder / "test"} if explicit else {"all": folder}

    class_names = sorted({c.name for d in part_dirs.values() for c in _class_folders(d)})
    paths: list[Path] = []
    labels: list[int] = []
    part_rows: dict[str, list[int]] = {part: [] for part in part_dirs}
    n_folders = len(part_dirs) * len(class_names)
    report(progress, "listing", 0, n_folders, message=f"Listing the images of {name}")
    for p, (part, part_dir) in enumerate(part_dirs.items()):
        for label, class_name in enumerate(class_names):
            class_dir = part_dir / class_name
            report(progress, "listing", p * len(class_names) + label, n_folders, message=f"{len(paths):,} images")
            if not class_dir.is_dir():
                continue
            # Resolving every file costs a stat per path component; inside a checked folder only links need it.
            resolved_dir = _inside(folder, class_dir)
            for entry in _image_files(class_dir):
                part_rows[part].append(len(paths))
                paths.append(_inside(folder, Path(entry.path)) if entry.is_symlink() else resolved_dir / entry.name)
                labels.append(label)
    report(progress, "listing", n_folders, n_folders, message=f"{len(paths):,} images listed")
    label_array = np.asarray(labels, dtype=np.int64)
    counts = {c: int((label_array == i).sum()) for i, c in enumerate(class_names)}
    if explicit:
        _check_classes(name, counts, minimum=1)
        splits = {DEFAULT_SPLIT: {part: np.asarray(rows, dtype=np.int64) for part, rows in part_rows.items()}}
        empty_parts = [p for p, rows in splits[DEFAULT_SPLIT].items() if len(rows) == 0]
        if empty_parts:
            raise DatasetError(f"{name}: the {', '.join(empty_parts)} folder(s) hold no images.")
    else:
        _check_classes(name, counts, minimum=3)
        splits = {DEFAULT_SPLIT: stratified_split(label_array, ratios=ratios, seed=seed)}
    return Dataset(
        key=key,
        name=name,
        root=folder.resolve(),
        class_names=tuple(class_names),
        image_paths=tuple(paths),
        labels=label_array,
        splits=splits,
        synthetic=synthetic,
    )


# ----------------------------------------------------------------------------------------------- oxford 17


def _oxford17_manual_hint(folder: Path, files: tuple[tuple[str, str, str], ...] | None = None) -> str:
    names = " and ".join(f"{file} ({url})" for file, url, _ in files or OXFORD17_FILES)
    return f"Download {names} with a browser and put both files in {folder}, then prepare the dataset again."


def prepare_oxford17(
    workspace: Workspace,
    *,
    progress: ProgressCallback | None = None,
    files: tuple[tuple[str, str, str], ...] | None = None,
) -> Dataset:
    """Download (if missing), verify, and extract Oxford 17; then load it.

    Files the user placed by hand in ``<data root>/oxford17/`` are used as they are. ``files`` is
    ``(file name, URL, MD5)`` per file: None means the official ones; a mirror (or a test's local server)
    passes its own, and whoever does so answers for its checksums.
    """
    files = files or OXFORD17_FILES
    folder = workspace.data_root / OXFORD17_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, url, expected_md5 in files:
        target = folder / file_name
        if target.exists():
            if file_digest(target, "md5") != expected_md5:
                raise MissingFileError(
                    f"{target} does not match the official MD5 {expected_md5}: it is incomplete or a different file. "
                    f"Delete it so it is downloaded again, or: {_oxford17_manual_hint(folder, files)}"
                )
            continue
        download(
            url,
            target,
            md5=expected_md5,
            what=file_name,
            manual_hint=_oxford17_manual_hint(folder, files),
            progress=progress,
        )
    if not (folder / "jpg").is_dir():
        report(progress, "extract", 0, 1, message="Extracting 17flowers.tgz")
        # Extract aside and move jpg/ in last, so an interrupted extraction never looks complete.
        staging = folder / ".extracting"
        shutil.rmtree(staging, ignore_errors=True)
        safe_extract_tar(folder / "17flowers.tgz", staging)
        if not (staging / "jpg").is_dir():
            raise DatasetError(f"{folder / '17flowers.tgz'} has no jpg/ folder; it is not the Oxford 17 archive.")
        os.replace(staging / "jpg", folder / "jpg")
        shutil.rmtree(staging, ignore_errors=True)
        report(progress, "extract", 1, 1, message="Extracted 17flowers.tgz")
    return load_oxford17(workspace)


def _read_oxford17_splits(mat_path: Path, n_images: int) -> dict[str, dict[str, np.ndarray]]:
    from scipy.io import loadmat

    mat = loadmat(mat_path, squeeze_me=True)
    splits: dict[str, dict[str, np.ndarray]] = {}
    for split_id in ("1", "2", "3"):
        parts = {}
        for part, mat_name in (("train", "trn"), ("val", "val"), ("test", "tst")):
            ids = np.asarray(mat[f"{mat_name}{split_id}"]).ravel()
            if not np.all(np.equal(np.mod(ids, 1), 0)) or ids.min() < 1 or ids.max() > n_images:
                raise DatasetError(f"{mat_path} holds non-integer or out-of-range image ids in {mat_name}{split_id}.")
            parts[part] = np.sort(ids.astype(np.int64) - 1)  # the file is 1-based (MATLAB)
        splits[split_id] = parts
    return splits


def oxford17_prepared(workspace: Workspace) -> bool:
    """The one test of whether Oxford 17 is ready to load: its photos are extracted and its split file is there."""
    folder = workspace.data_root / OXFORD17_DIRNAME
    return (folder / "jpg").is_dir() and (folder / "datasplits.mat").is_file()


def load_oxford17(workspace: Workspace) -> Dataset:
    folder = workspace.data_root / OXFORD17_DIRNAME
    n_images = len(OXFORD17_CLASSES) * OXFORD17_IMAGES_PER_CLASS
    image_dir = folder / "jpg"
    if not oxford17_prepared(workspace):
        raise MissingFileError(f"Oxford 17 is not prepared. {_oxford17_manual_hint(folder)}")
    paths = tuple((image_dir / f"image_{i:04d}.jpg").resolve() for i in range(1, n_images + 1))
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise DatasetError(
            f"{image_dir} lacks {len(missing)} of the 1,360 images (first: {missing[0]}). "
            "Delete the jpg folder and prepare again."
        )
    labels = np.arange(n_images, dtype=np.int64) // OXFORD17_IMAGES_PER_CLASS  # blocks of 80 per class
    return Dataset(
        key=OXFORD17_KEY,
        name="Oxford 17 flowers",
        root=folder.resolve(),
        class_names=OXFORD17_CLASSES,
        image_paths=paths,
        labels=labels,
        splits=_read_oxford17_splits(folder / "datasplits.mat", n_images),
    )


# ----------------------------------------------------------------------------------------------- synthetic


def synthetic_folder(workspace: Workspace, seed: int = 0) -> Path:
    from core.data.synthetic import DEFAULT_DIRNAME

    return workspace.data_root / (DEFAULT_DIRNAME if seed == 0 else f"{DEFAULT_DIRNAME}-seed{seed}")


def prepare_synthetic(workspace: Workspace, *, seed: int = 0, progress: ProgressCallback | None = None) -> Dataset:
    from core.data.synthetic import generate_synthetic_flowers

    # A set generated earlier at another size (a small quick one, the tests' tiny one) is used as it is:
    # redrawing it at full size would silently replace the data that existing runs were made on.
    if not (synthetic_folder(workspace, seed) / "dataset.json").exists():
        generate_synthetic_flowers(synthetic_folder(workspace, seed), seed=seed, progress=progress)
    return load_synthetic(workspace, seed=seed)


def load_synthetic(workspace: Workspace, *, seed: int = 0) -> Dataset:
    folder = synthetic_folder(workspace, seed)
    if not (folder / "dataset.json").exists():
        raise MissingFileError(
            "Synthetic Flowers is not generated yet: prepare the 'synthetic' dataset first (it takes seconds)."
        )
    return load_folder_dataset(folder, key=SYNTHETIC_KEY, name="Synthetic Flowers (synthetic)", synthetic=True)


# ----------------------------------------------------------------------------------------------- registry


def _folder_path(workspace: Workspace, key: str) -> Path:
    relative = key[len(FOLDER_PREFIX) :]
    if not relative:
        raise DatasetError("A folder dataset needs a name: folder:<folder under the data root>.")
    return contained_path(workspace.data_root, relative)


def dataset_folder(key: str, workspace: Workspace) -> Path:
    """The folder dataset ``key`` lives in (its ``Dataset.root``), found without reading the dataset."""
    if key == OXFORD17_KEY:
        return (workspace.data_root / OXFORD17_DIRNAME).resolve()
    if key == SYNTHETIC_KEY:
        return synthetic_folder(workspace).resolve()
    if key.startswith(FOLDER_PREFIX):
        return _folder_path(workspace, key)
    raise DatasetError(
        f"dataset must be 'oxford17', 'synthetic' or 'folder:<name under {workspace.data_root}>', got {key!r}."
    )


def load_dataset(
    key: str, workspace: Workspace, *, exclusions: bool = True, progress: ProgressCallback | None = None
) -> Dataset:
    """Load a prepared dataset by key, without downloading or generating anything.

    The images the user excluded (``core.data.exclusions``) are left out unless ``exclusions`` is False. A folder
    dataset reports ``"listing"`` progress to ``progress``.
    """
    from core.data.exclusions import apply_exclusions

    dataset = replace(
        _load_dataset_files(key, workspace, progress=progress), digest_cache=workspace.root / DIGEST_CACHE_NAME
    )
    return apply_exclusions(dataset, workspace) if exclusions else dataset


def _load_dataset_files(key: str, workspace: Workspace, *, progress: ProgressCallback | None = None) -> Dataset:
    if key == OXFORD17_KEY:
        return load_oxford17(workspace)
    if key == SYNTHETIC_KEY:
        return load_synthetic(workspace)
    folder = dataset_folder(key, workspace)  # a folder dataset's, or the error naming the keys allowed
    return load_folder_dataset(
        folder,
        key=f"{FOLDER_PREFIX}{folder.relative_to(workspace.data_root.resolve())}",
        name=folder.name,
        progress=progress,
    )


def prepare_dataset(key: str, workspace: Workspace, *, progress: ProgressCallback | None = None) -> Dataset:
    """Like ``load_dataset``, but downloads Oxford 17 or generates Synthetic Flowers when missing."""
    if key == OXFORD17_KEY:
        prepare_oxford17(workspace, progress=progress)
    elif key == SYNTHETIC_KEY:
        prepare_synthetic(workspace, progress=progress)
    return load_dataset(key, workspace, progress=progress)


@dataclass(frozen=True)
class DatasetEntry:
    key: str
    name: str
    prepared: bool

    @property
    def state(self) -> str:
        """The one wording of a dataset's state, on every page and in the CLI."""
        if self.prepared:
            return "prepared"
        if self.key == OXFORD17_KEY:
            return "not prepared: downloaded (about 60 MB) when first used"
        return "not prepared: generated (seconds) when first used"


def list_datasets(workspace: Workspace) -> list[DatasetEntry]:
    """The datasets the user can pick: the two built-ins (prepared or not) and every folder under the data root."""
    from core.data.synthetic import DEFAULT_DIRNAME

    entries = [
        DatasetEntry(OXFORD17_KEY, "Oxford 17 flowers", oxford17_prepared(workspace)),
        DatasetEntry(
            SYNTHETIC_KEY, "Synthetic Flowers (synthetic)", (synthetic_folder(workspace) / "dataset.json").exists()
        ),
    ]
    if workspace.data_root.is_dir():
        reserved = {OXFORD17_DIRNAME, DEFAULT_DIRNAME}
        for folder in sorted(p for p in workspace.data_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder.name not in reserved and not folder.name.startswith(DEFAULT_DIRNAME):
                entries.append(DatasetEntry(f"{FOLDER_PREFIX}{folder.name}", folder.name, True))
    return entries


def dataset_summary(dataset: Dataset) -> dict:
    """Counts per class and split part, for tables and charts; JSON-friendly."""
    counts = {}
    for split_id, parts in dataset.splits.items():
        counts[split_id] = {
            part: np.bincount(dataset.labels[rows], minlength=dataset.num_classes).tolist()
            for part, rows in parts.items()
        }
    return {
        "key": dataset.key,
        "name": dataset.name,
        "classes": list(dataset.class_names),
        "images": len(dataset.image_paths),
        "counts": counts,
    }
