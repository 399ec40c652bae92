"""Feature extraction: variants from one pass, the sharded resumable cache, old caches, cancelling mid-extraction."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.backbones.registry import build_backbone
from core.backbones.resolved import ResolvedBackbone
from core.base.errors import FlowerProbeError
from core.base.workspace import Workspace
from core.data.datasets import Dataset, load_dataset
from core.features import extract as features_module
from core.features.extract import (
    CacheEntry,
    ShardedCache,
    extract_features,
    feature_loader,
    prepare_model,
    read_features,
)
from core.jobs.runner import JobRunner

REPO = Path(__file__).resolve().parents[3]


def _counting_images(monkeypatch) -> list[int]:
    """Images the backbones built by extraction run forwards on, from now on."""
    seen = [0]
    real_build = ResolvedBackbone.build

    def build(self, **kwargs):
        model = real_build(self, **kwargs)
        model.register_forward_hook(lambda _m, inputs, _o: seen.__setitem__(0, seen[0] + len(inputs[0])))
        return model

    monkeypatch.setattr(ResolvedBackbone, "build", build)
    return seen


def _mini_dataset(workspace: Workspace, source: Path, *, per_class: int, classes: int = 2, name: str = "mini"):
    """A folder dataset of ``classes`` x ``per_class`` of the tiny synthetic photos, under the data root."""
    for class_dir in sorted(p for p in (source / "train").iterdir() if p.is_dir())[:classes]:
        target = workspace.data_root / name / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for photo in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy2(photo, target / photo.name)
    return load_dataset(f"folder:{name}", workspace)


def _mini_copy(workspace: Workspace, root: Path) -> tuple[Workspace, Dataset]:
    """A new workspace at ``root`` whose data root holds a copy of ``workspace``'s mini dataset (same files and
    mtimes, so the same fingerprint), with an empty feature cache."""
    copy = Workspace(root=root, data_root=root / "datasets")
    shutil.copytree(workspace.data_root / "mini", copy.data_root / "mini", copy_function=shutil.copy2)
    return copy, load_dataset("folder:mini", copy)


def _model_output(dataset, backbone: str, precision: str) -> np.ndarray:
    """Today's path, independently: the prepared model on every image in one batch."""
    model, _ = build_backbone(backbone, weights="random")
    device = torch.device("cpu")
    model = prepare_model(model, device=device, precision=precision)
    images, _, errors = next(
        iter(
            feature_loader(
                dataset.image_paths, backbone, device=device, batch_size=len(dataset.image_paths), num_workers=0
            )
        )
    )
    assert not any(errors)
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        return model(images.to(dtype=dtype, memory_format=torch.channels_last)).float().numpy()


# dinov2_vits14 is slow for -m "not slow" (under 3 min on 2 cores); efficientnet_lite0 checks the same thing fast.
@pytest.mark.parametrize("backbone", [pytest.param("dinov2_vits14", marks=pytest.mark.slow), "efficientnet_lite0"])
def test_default_variant_is_bit_identical_to_the_model_output(workspace, tiny_synthetic_folder, backbone):
    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    result = extract_features(dataset, backbone, workspace=workspace, weights="random", num_workers=0)
    assert result.variant == ("cls" if backbone.startswith("dinov2") else "gap")
    expected = _model_output(dataset, backbone, result.precision)
    assert np.array_equal(result.features, expected)  # shards and progress hooks change no bit
    np.testing.assert_array_equal(result.rows, np.arange(len(dataset.image_paths)))


def test_every_variant_comes_from_one_pass_and_another_variant_runs_zero_forwards(
    workspace, tiny_synthetic_folder, monkeypatch
):
    seen = _counting_images(monkeypatch)
    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    n = len(dataset.image_paths)
    cls = extract_features(dataset, "dinov2_vits14", workspace=workspace, weights="random", num_workers=0)
    assert seen[0] == n  # each image forwarded once for all four variants
    seen[0] = 0
    variants = {
        v: extract_features(dataset, "dinov2_vits14", workspace=workspace, weights="random", variant=v)
        for v in ("patch_mean", "cls+patch_mean", "last4")
    }
    assert seen[0] == 0 and all(v.from_cache for v in variants.values())
    assert variants["patch_mean"].features.shape == (n, 384) and variants["last4"].features.shape == (n, 4 * 384)
    np.testing.assert_array_equal(
        variants["cls+patch_mean"].features, np.concatenate([cls.features, variants["patch_mean"].features], 1)
    )
    np.testing.assert_array_equal(
        variants["last4"].features[:, -384:], cls.features
    )  # the last block's CLS is the default
    assert variants["last4"].cache_path == cls.cache_path
    again = read_features(cls.cache_path, variant="last4")
    np.testing.assert_array_equal(again.features, variants["last4"].features)
    with pytest.raises(FlowerProbeError, match="features must be one of cls, patch_mean"):
        extract_features(dataset, "dinov2_vits14", workspace=workspace, weights="random", variant="gap")


def test_a_single_file_cache_from_before_variants_reads_as_the_default(workspace, tiny_synthetic_folder, monkeypatch):
    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    entry = CacheEntry.of(dataset, "resnet50", workspace=workspace, weights_tag="random", precision="bf16")
    old = np.random.default_rng(0).normal(size=(len(dataset.image_paths), 2048)).astype(np.float32)
    meta = {
        "backbone": "resnet50",
        "weights_tag": "random",
        "precision": "bf16",
        "device": "old CPU",
        "seconds": 1.5,
        "skipped": [],
    }
    with open(entry.legacy_path, "wb") as handle:  # the version-1 format, as extract_features wrote it then
        np.savez(handle, features=old, rows=np.arange(len(old)), meta=np.asarray(json.dumps(meta)))
    seen = _counting_images(monkeypatch)
    result = extract_features(dataset, "resnet50", workspace=workspace, weights="random", precision="bf16")
    assert seen[0] == 0 and result.from_cache and result.variant == "gap" and result.cache_path == entry.legacy_path
    np.testing.assert_array_equal(result.features, old)
    np.testing.assert_array_equal(read_features(entry.legacy_path).features, old)
    with pytest.raises(FlowerProbeError, match="extract the features again"):
        read_features(entry.legacy_path, variant="patch_mean")


def test_large_cached_arrays_are_memory_mapped(workspace, tiny_synthetic_folder, monkeypatch):
    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    small = extract_features(dataset, "efficientnet_lite0", workspace=workspace, weights="random", num_workers=0)
    assert not isinstance(small.features, np.memmap)
    monkeypatch.setattr(features_module, "MMAP_ABOVE_BYTES", 0)
    mapped = read_features(small.cache_path)
    assert isinstance(mapped.features, np.memmap)
    np.testing.assert_array_equal(mapped.features, small.features)


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from core.data.datasets import load_dataset
    from core.features.extract import extract_features
    from core.base.workspace import Workspace

    root = Path(sys.argv[1])
    workspace = Workspace(root=root, data_root=root / "datasets")
    dataset = load_dataset("folder:mini", workspace)
    seen = {0}

    def pause_after_each_batch(event):  # slow on purpose, so the parent can kill it between shards
        if event.done not in seen:
            seen.add(event.done)
            time.sleep(1.0)

    extract_features(dataset, "efficientnet_lite0", workspace=workspace, weights="random", num_workers=0, shard_size=4,
                     progress=pause_after_each_batch)
""")


@pytest.mark.slow
def test_killed_sharded_extraction_resumes_with_only_the_missing_shards(
    workspace, tiny_synthetic_folder, tmp_path, monkeypatch
):
    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=4, classes=4)  # 16 images, 4 shards of 4
    entry = CacheEntry.of(dataset, "efficientnet_lite0", workspace=workspace, weights_tag="random", precision="fp32")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(workspace.root)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )  # same threads: same bits
    deadline = time.monotonic() + 240
    done: dict = {}
    while time.monotonic() < deadline and child.poll() is None:
        done = (ShardedCache.read_manifest(entry.folder) or {}).get("shards", {})
        if len(done) >= 2:
            break
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the extraction ended before it could be killed"
    manifest = ShardedCache.read_manifest(entry.folder)
    finished = len(manifest["shards"])
    assert 2 <= finished < 4 and not manifest["complete"]

    seen = _counting_images(monkeypatch)
    resumed = extract_features(
        dataset, "efficientnet_lite0", workspace=workspace, weights="random", num_workers=0, shard_size=4
    )
    assert seen[0] == len(dataset.image_paths) - 4 * finished  # only the missing shards were computed

    fresh, fresh_dataset = _mini_copy(workspace, tmp_path / "fresh")
    uninterrupted = extract_features(
        fresh_dataset, "efficientnet_lite0", workspace=fresh, weights="random", num_workers=0, shard_size=4
    )
    assert np.array_equal(resumed.features, uninterrupted.features)
    np.testing.assert_array_equal(resumed.rows, uninterrupted.rows)
    assert not list(entry.folder.glob("shard-*"))  # joined into one file per variant


def test_cancel_stops_a_running_extraction_within_one_batch(workspace, tiny_synthetic_folder):
    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=4, classes=4)
    runner = JobRunner()

    def target(context):
        return extract_features(
            dataset,
            "efficientnet_lite0",
            workspace=workspace,
            weights="random",
            num_workers=0,
            batch_size=64,
            progress=context.progress,
        )

    job = runner.submit("extract", target)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stage = runner.get(job.id).stage
        if stage is not None and stage.stage == "features":  # the model is running on the first batch
            break
        time.sleep(0.01)
    else:
        pytest.fail("the extraction never reported progress")
    done_at_cancel = runner.get(job.id).stage.done
    runner.cancel(job.id)
    finished = runner.wait(job.id, timeout_s=60)
    assert finished.status == "cancelled"
    # It stops at the next progress report: within the batch that was running (timings live in bench/, not here).
    assert finished.stage.done <= done_at_cancel + 64
    assert finished.stage.done < len(dataset.image_paths)  # it stopped mid-way


def test_extraction_job_caches_the_features_later_steps_read(workspace, tiny_synthetic_folder, monkeypatch):
    from core.jobs.runner import extraction_job

    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    runner = JobRunner()
    job = runner.submit(
        "features",
        extraction_job(dataset="folder:mini", backbone="efficientnet_lite0", workspace=workspace, weights="random"),
    )
    finished = runner.wait(job.id, timeout_s=300)
    assert finished.status == "completed", finished.error
    assert finished.result["images"] == len(dataset.image_paths) and not finished.result["from_cache"]
    seen = _counting_images(monkeypatch)
    again = extract_features(dataset, "efficientnet_lite0", workspace=workspace, weights="random")
    assert seen[0] == 0 and str(again.cache_path) == finished.result["cache_path"]


def test_file_digests_are_remembered_on_disk_and_stay_right_for_copies(tmp_path, monkeypatch):
    import hashlib

    from core.base import fileio
    from core.base.fileio import file_digests

    originals = tmp_path / "originals"
    originals.mkdir()
    contents = [f"photo {i}".encode() * (i + 1) for i in range(5)]
    files = [originals / f"{i}.jpg" for i in range(5)]
    for path, content in zip(files, contents, strict=True):
        path.write_bytes(content)
    cache = tmp_path / "digests.sqlite"
    expected = [hashlib.sha256(c).hexdigest() for c in contents]
    events = []
    assert file_digests(files, cache_path=cache, progress=events.append) == expected
    assert events[-1].done == events[-1].total == 5 and events[-1].stage == "fingerprint"

    reads = []
    real = fileio._hash_file
    monkeypatch.setattr(fileio, "_hash_file", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    monkeypatch.setattr(fileio, "_DIGESTS", {})  # what a new process starts with
    assert file_digests(files, cache_path=cache) == expected and reads == []  # only stats

    copies = tmp_path / "copies"
    shutil.copytree(originals, copies, copy_function=shutil.copy)  # new modification times
    assert file_digests([copies / p.name for p in files], cache_path=cache) == expected and len(reads) == 5
    os.utime(files[0], ns=(1, 1))
    assert file_digests(files, cache_path=cache) == expected and len(reads) == 6


def test_extract_command_caches_once_and_refuses_a_variant_the_backbone_lacks(workspace, tiny_synthetic_folder, capsys):
    from core.__main__ import main

    _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    args = ["extract", "--dataset", "folder:mini", "--backbone", "efficientnet_lite0", "--weights", "random"]
    assert main([*args, "--features", "gap"]) == 0
    first = capsys.readouterr().out
    assert "6 images, computed in" in first and "gap: 1280-d" in first
    assert main(args) == 0
    assert "6 images, read from the cache" in capsys.readouterr().out
    assert main([*args, "--features", "patch_mean"]) == 2
    assert "features must be one of gap for efficientnet_lite0, got 'patch_mean'" in capsys.readouterr().err


def test_a_repeat_fingerprint_only_stats_and_a_copy_keeps_it(workspace, tiny_synthetic_folder, tmp_path, monkeypatch):
    from core.base import fileio

    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    assert dataset.digest_cache is not None
    first = dataset.compute_fingerprint()
    reads = []
    monkeypatch.setattr(fileio, "_DIGESTS", {})  # a new process
    real = fileio._hash_file
    monkeypatch.setattr(fileio, "_hash_file", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    assert load_dataset("folder:mini", workspace).fingerprint == first and reads == []

    copy_root = tmp_path / "copy"
    copied = Workspace(root=copy_root, data_root=copy_root / "datasets")
    shutil.copytree(workspace.data_root / "mini", copied.data_root / "mini", copy_function=shutil.copy)  # new mtimes
    assert load_dataset("folder:mini", copied).fingerprint == first and len(reads) == len(dataset.image_paths)
    (copied.data_root / "mini" / dataset.image_paths[0].parent.name / dataset.image_paths[0].name).write_bytes(
        b"changed"
    )
    assert load_dataset("folder:mini", copied).fingerprint != first
