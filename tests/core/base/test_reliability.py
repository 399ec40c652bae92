"""Reliability: a CLI killed mid-work, two writers at once, a full or read-only disk, bad images in a dataset.

The kill and concurrency tests drive the real CLI (``python -m core compare``) in subprocesses on the
tiny Synthetic Flowers and watch its real output to know when to strike; nothing in the engine knows it
is being tested. Disk faults are made real where the machine allows it (a full tmpfs, a read-only bind
mount: root with CAP_SYS_ADMIN) and simulated at the system-call boundary everywhere, so CI always
checks them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.base import fileio
from core.base.errors import WorkspaceWriteError
from core.base.workspace import Workspace
from core.data.datasets import DIGEST_CACHE_NAME, load_dataset, synthetic_folder
from core.features.extract import ShardedCache, extract_features, read_features
from core.probing.experiment import ExperimentConfig, run_experiment
from core.probing.heads import HeadConfig
from core.runs.files import RunFiles
from core.runs.registry import RunRegistry
from tests.helpers.cli_process import Cli
from tests.helpers.image_catalogue import write_catalogue

BACKBONE = "efficientnet_lite0"  # pretrained weights ship with a pip package: works offline
EPOCHS = 30  # enough epochs to kill the CLI between its first "Epoch:" line and the end; seconds on a CPU
COMPARE = ["compare", "--dataset", "synthetic", "--backbones", BACKBONE, "--epochs", str(EPOCHS)]
FEATURES_LINE = re.compile(r"^\s*features \[[#.]*\] (\d+)/(\d+)")


# ----------------------------------------------------------------------------------------------------------- helpers


def _tiny_workspace_root(root: Path, tiny_synthetic_folder: Path) -> Path:
    shutil.copytree(tiny_synthetic_folder, synthetic_folder(Workspace(root=root, data_root=root / "datasets")))
    return root


def _feature_caches(root: Path) -> list[Path]:
    """The complete feature cache entries (core.features.extract: a folder of shards whose manifest says complete)."""
    folders = (p for p in (root / "features").iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(p for p in folders if (ShardedCache.read_manifest(p) or {}).get("complete"))


def _load_cache(path: Path) -> dict[str, np.ndarray]:
    """The cache's features and rows, read in full: a half-written entry fails here."""
    features = read_features(path)
    return {"features": np.array(features.features), "rows": np.array(features.rows)}


def _lock_is_free(lock_path: Path) -> bool:
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def _head_files(root: Path) -> set[str]:
    return {p.name for p in (root / "heads").glob("*.safetensors")} if (root / "heads").is_dir() else set()


def _numbers(registry: RunRegistry, run: dict) -> dict:
    return {
        "test_acc": run["test_acc"],
        "best_epoch": run["best_epoch"],
        "confusion": run["confusion"],
        "epochs": [{k: v for k, v in e.items() if k != "run_id"} for e in registry.epochs(run["id"])],
        "predicted": [(p["row"], p["predicted"]) for p in registry.predictions(run["id"])],
    }


# ------------------------------------------------------------------------------------- 1, 2: kill -9 and two writers


@pytest.fixture(scope="module")
def two_writers(tmp_path_factory, tiny_synthetic_folder) -> tuple[Path, list[str]]:
    """Two CLIs started together on one fresh workspace, asking for the same missing features."""
    root = _tiny_workspace_root(tmp_path_factory.mktemp("two-writers") / "workspace", tiny_synthetic_folder)
    clis = [Cli(COMPARE, workspace_root=root), Cli(COMPARE, workspace_root=root)]
    return root, [cli.finish() for cli in clis]


@pytest.mark.slow
def test_two_processes_writing_one_workspace_both_complete_and_share_one_valid_cache(two_writers):
    root, outputs = two_writers
    registry = RunRegistry(root / "runs.sqlite")
    runs = registry.list_runs()
    assert [r["status"] for r in runs] == ["completed", "completed"], outputs
    a, b = runs
    # Each compare is a group spanning its work (a run is recorded whole when it ends): the two worked at once.
    first, second = registry.list_groups()
    assert {first["status"], second["status"]} == {"completed"} and first["id"] != second["id"]
    assert max(first["created_at"], second["created_at"]) < min(first["finished_at"], second["finished_at"]), (
        "the two comparisons did not overlap"
    )
    # One computed the features and the other waited for the lock and read them: never both, never half a file.
    assert sorted(r["timings"]["features_cached"] for r in runs) == [False, True]
    caches = _feature_caches(root)
    ws = Workspace(root=root, data_root=root / "datasets")
    assert len(caches) == 1 and RunFiles(a, ws).features == RunFiles(b, ws).features == caches[0]
    arrays = _load_cache(caches[0])
    n_images = len(load_dataset("synthetic", ws).image_paths)
    assert arrays["features"].shape == (n_images, 1280) and np.isfinite(arrays["features"]).all()
    assert np.array_equal(arrays["rows"], np.arange(n_images))
    assert not list((root / "features").rglob(".*.tmp")), "a temporary cache file was left behind"
    # Both runs are recorded completely, with identical numbers: same features, same seed.
    for run in runs:
        assert len(registry.epochs(run["id"])) == EPOCHS and RunFiles(run, ws).head.is_file()
        assert len(registry.predictions(run["id"])) == len(load_dataset("synthetic", ws).split("1")["test"])
    assert _numbers(registry, a) == _numbers(registry, b)
    assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-9)
    assert registry.integrity_check() == "ok"


@pytest.mark.slow
def test_cli_killed_during_extraction_then_training_loses_nothing_and_reruns_to_the_same_numbers(
    tmp_path, tiny_synthetic_folder, two_writers
):
    root = _tiny_workspace_root(tmp_path / "workspace", tiny_synthetic_folder)

    # kill -9 while features are being computed: after the first batch's progress line, before the last.
    cli = Cli(COMPARE, workspace_root=root)
    line = cli.wait_for(lambda text: bool((m := FEATURES_LINE.match(text)) and int(m[1]) < int(m[2])))
    cli.kill_9()
    assert "Epoch:" not in cli.output, f"killed too late to be during extraction ({line!r}):\n{cli.output}"
    for path in _feature_caches(root):  # an entry is complete or not served (resumable shards are not a cache)
        assert _load_cache(path)["features"].shape[0] == int(FEATURES_LINE.match(line)[2])
    registry = RunRegistry(root / "runs.sqlite")  # opening it reconciles groups whose process is gone
    # compare is a suite: its runs are recorded whole or not at all, and the group says it was interrupted.
    assert registry.list_runs() == []
    [group] = registry.list_groups()
    assert (group["kind"], group["status"], group["recorded"], group["planned"]) == ("compare", "interrupted", 0, 1)
    assert registry.integrity_check() == "ok"

    # kill -9 while the head trains: the features are complete by then, the run is not.
    cli = Cli(COMPARE, workspace_root=root)
    cli.wait_for(lambda text: text.startswith("Epoch: 1 "))
    cli.kill_9()
    [cache] = _feature_caches(root)
    extracted = _load_cache(cache)
    assert _lock_is_free(cache.with_name(cache.name + ".lock"))
    registry = RunRegistry(root / "runs.sqlite")
    assert registry.list_runs() == [], "half a run was recorded"
    # The second CLI took the interrupted group up again (the same comparison) and was interrupted in turn.
    assert [(g["id"], g["status"]) for g in registry.list_groups()] == [(group["id"], "interrupted")]
    assert _head_files(root) == set()
    assert registry.integrity_check() == "ok"

    # The same command again completes, from the cache the killed run left, with an uninterrupted run's numbers.
    cli = Cli(COMPARE, workspace_root=root)
    cli.finish()
    registry = RunRegistry(root / "runs.sqlite")
    [latest] = registry.list_runs()
    assert latest["status"] == "completed" and latest["timings"]["features_cached"] is True
    assert latest["group_id"] == group["id"] and registry.get_group(group["id"])["status"] == "completed"
    reference_root, _ = two_writers
    reference_registry = RunRegistry(reference_root / "runs.sqlite")
    reference = reference_registry.list_runs()[0]
    np.testing.assert_array_equal(extracted["features"], _load_cache(_feature_caches(reference_root)[0])["features"])
    assert _numbers(registry, latest) == _numbers(reference_registry, reference)
    assert latest["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-9)
    assert registry.integrity_check() == "ok"


# ----------------------------------------------------------------------------------------- 4: full or read-only disk


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _small_dataset(root: Path, name: str = "small") -> str:
    """Two classes of three tiny photos under the data root: features in a second, a cache key nothing else has."""
    for label, colour in enumerate(((200, 40, 40), (40, 40, 200))):
        folder = root / "datasets" / name / f"class-{label}"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (32, 32), tuple(min(255, c + 10 * i) for c in colour)).save(
                folder / f"{i}.jpg", quality=90
            )
    return f"folder:{name}"


def _saved_workspace(root: Path, populated_root: Path) -> Workspace:
    """A copy of the populated workspace (runs, feature caches, heads) plus a small dataset nothing was run on."""
    shutil.copytree(populated_root, root)
    _small_dataset(root)
    RunRegistry(root / "runs.sqlite")  # settle the WAL now, so later opens of an unchanged registry change no byte
    return Workspace(root=root, data_root=root / "datasets")


def _small_run(ws: Workspace) -> dict:
    return run_experiment(
        ExperimentConfig(dataset="folder:small", backbone=BACKBONE, head=HeadConfig(epochs=2)), workspace=ws
    )


def _completed_records(ws: Workspace) -> list[tuple]:
    registry = RunRegistry(ws.registry_path)
    return [
        (r, registry.epochs(r["id"]), registry.predictions(r["id"])) for r in registry.list_runs(status="completed")
    ]


class Fault:
    """A disk fault on a folder: ``start()`` breaks writes there, ``relieve()`` makes room or lifts read-only again."""

    folder: Path

    def start(self) -> None:
        raise NotImplementedError

    def relieve(self) -> None:
        raise NotImplementedError


class SimulatedFault(Fault):
    """The errors a full (ENOSPC) or read-only (EROFS) disk gives, raised where Flower Probe writes.

    File data fails halfway through ``np.savez`` and at ``os.replace``; SQLite gets a database that may
    not grow by a page (SQLITE_FULL) or a read-only connection. Runs everywhere, root or not.
    """

    def __init__(self, folder: Path, code: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder, self.code, self.monkeypatch = folder, code, monkeypatch
        folder.mkdir()

    def start(self) -> None:
        code = self.code

        def refuse(*args, **kwargs):
            raise OSError(code, os.strerror(code))

        def partial_savez(file, *args, **kwargs):
            file.write(b"PK\x03\x04 half an archive")  # some bytes landed before the disk said no
            refuse()

        real_connect = sqlite3.connect

        def connect(database, *args, **kwargs):
            if code == errno.EROFS:
                return real_connect(f"file:{database}?mode=ro", *args, **{**kwargs, "uri": True})
            conn = real_connect(database, *args, **kwargs)
            conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
            return conn

        self.monkeypatch.setattr(np, "savez", partial_savez)
        self.monkeypatch.setattr(fileio.os, "replace", refuse)
        self.monkeypatch.setattr(sqlite3, "connect", connect)

    def relieve(self) -> None:
        self.monkeypatch.undo()


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip()}); the simulated faults cover this case")


class FullTmpfs(Fault):
    """A real full disk: the folder is a small tmpfs, filled to its last byte by ``start()``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        _mount("-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder))
        self.filler = folder / "filler"

    def start(self) -> None:
        with open(self.filler, "wb", buffering=0) as handle:
            for block in (1 << 20, 1 << 12, 1):
                with contextlib.suppress(OSError):
                    while True:
                        handle.write(b"\0" * block)
        with pytest.raises(OSError):  # the disk really is full
            (self.folder / "probe").write_bytes(b"x" * 4096)

    def relieve(self) -> None:
        self.filler.unlink()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], check=True)


class ReadOnlyBind(Fault):
    """A real read-only workspace: a read-only bind mount over it; the kernel refuses writes with EROFS, root's too."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.mounted: list[Path] = []

    def start(self) -> None:
        target = str(self.folder / "workspace")
        _mount("--bind", target, target)
        self.mounted.append(Path(target))
        _mount("-o", "remount,bind,ro", target)

    def relieve(self) -> None:
        while self.mounted:
            subprocess.run(["umount", str(self.mounted.pop())], check=True)

    def close(self) -> None:
        self.relieve()


def _can_mount() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def _fault(kind: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fault]:
    if kind.endswith("(simulated)"):
        yield SimulatedFault(folder, errno.ENOSPC if kind.startswith("disk full") else errno.EROFS, monkeypatch)
        return
    if not _can_mount():
        pytest.skip("a real full or read-only file system needs root and mount; the simulated faults cover this case")
    fault = FullTmpfs(folder) if kind.startswith("disk full") else ReadOnlyBind(folder)
    try:
        yield fault
    finally:
        fault.close()


@pytest.mark.parametrize(
    "kind", ["disk full (simulated)", "read-only (simulated)", "disk full (tmpfs)", "read-only (bind mount)"]
)
def test_full_or_read_only_disk_fails_clearly_and_damages_nothing(tmp_path, populated_root, monkeypatch, kind):
    with _fault(kind, tmp_path / "disk", monkeypatch) as fault:
        ws = _saved_workspace(fault.folder / "workspace", populated_root)
        before, records = _snapshot(ws.root), _completed_records(ws)
        dataset = load_dataset("folder:small", ws)

        fault.start()
        # Features cached before the fault are still served: reading them needs no write.
        assert extract_features(load_dataset("synthetic", ws), BACKBONE, workspace=ws).from_cache
        with pytest.raises(WorkspaceWriteError) as caching:
            extract_features(dataset, BACKBONE, workspace=ws, num_workers=0)
        with pytest.raises(WorkspaceWriteError) as running:
            _small_run(ws)
        fault.relieve()

        for error in (caching.value, running.value):
            assert str(ws.root) in str(error) and ("disk" in str(error) or "writable" in str(error)), str(error)
        after = _snapshot(ws.root)
        registry = RunRegistry(ws.registry_path)
        # Where SQLite could still write, the failed run is recorded with its reason; else the registry is untouched.
        new_runs = registry.list_runs()[: len(registry.list_runs()) - len(records)]
        assert all(r["status"] == "failed" and "disk space" in r["error"] for r in new_runs), new_runs
        # Besides the registry, only the file-digest cache may change (SQLite writes it within its pages where it can):
        # a cache of what the image files hold, rebuilt from them whenever it is missing or stale.
        changed = {name for name, data in before.items() if after.get(name) != data} - {DIGEST_CACHE_NAME}
        assert changed == ({"runs.sqlite"} if new_runs else set()), "files saved before the fault changed"
        # Lock files and SQLite's own journal may appear; nothing else may (no half-written cache or head).
        assert [n for n in set(after) - set(before) if not n.endswith((".lock", "-wal", "-shm"))] == [], (
            "partial files were left"
        )
        assert _completed_records(ws) == records
        assert RunRegistry(ws.registry_path).integrity_check() == "ok"
        # With room again, the same work succeeds: the fault left nothing behind that blocks it.
        assert _small_run(ws)["status"] == "completed"
        assert _completed_records(ws)[1:] == records


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EROFS, "Read-only file system"),
        PermissionError(errno.EACCES, "Permission denied"),
    ],
)
def test_disk_errors_names_the_path_and_what_to_do(tmp_path, error):
    with pytest.raises(WorkspaceWriteError) as raised, fileio.disk_errors(tmp_path / "runs.sqlite"):
        raise error
    message = str(raised.value)
    assert str(tmp_path / "runs.sqlite") in message and os.strerror(error.errno) in message and "disk space" in message
    assert raised.value.__cause__ is error


def test_disk_errors_turns_sqlite_full_and_read_only_into_the_same_message(tmp_path):
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x BLOB)")
    readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(WorkspaceWriteError, match="readonly"), fileio.disk_errors(path):
        readonly.execute("INSERT INTO t VALUES (1)")
    readonly.close()
    full = sqlite3.connect(path)
    full.execute(f"PRAGMA max_page_count={full.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(WorkspaceWriteError, match="full"), fileio.disk_errors(path):
        full.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    full.close()


def test_disk_errors_lets_other_errors_through(tmp_path):
    with pytest.raises(FileNotFoundError), fileio.disk_errors(tmp_path):
        (tmp_path / "missing" / "file").read_bytes()
    with pytest.raises(sqlite3.OperationalError, match="syntax"), fileio.disk_errors(tmp_path):
        sqlite3.connect(":memory:").execute("NOT SQL")


# ---------------------------------------------------------------------------------------- 7: bad images in a dataset


def test_bad_images_inside_a_dataset_are_skipped_listed_and_the_rest_finish(workspace):
    entries = {}
    for class_name in ("alpha", "beta"):
        entries = write_catalogue(workspace.data_root / "catalogue" / class_name)
    bad = {e.filename for e in entries.values() if not e.expect_ok}
    good = {e.filename for e in entries.values() if e.expect_ok}
    assert len(bad) >= 6 and len(good) >= 10

    config = ExperimentConfig(dataset="folder:catalogue", backbone=BACKBONE, head=HeadConfig(epochs=2))
    run = run_experiment(config, workspace=workspace)

    assert run["status"] == "completed", run["error"]
    skipped = {(Path(path).parent.name, Path(path).name): reason for path, reason in run["skipped"]}
    assert set(skipped) == {(c, name) for c in ("alpha", "beta") for name in bad}
    assert all(reason.strip() for reason in skipped.values())
    dataset = load_dataset("folder:catalogue", workspace)
    features = extract_features(dataset, BACKBONE, workspace=workspace)
    assert features.from_cache and len(features.rows) == 2 * len(good)
    assert {dataset.image_paths[r].name for r in features.rows} == good
    predicted = {Path(p["path"]).name for p in RunRegistry(workspace.registry_path).predictions(run["id"])}
    assert predicted and predicted <= good
