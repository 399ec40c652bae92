"""Exclusions (core.data.exclusions): stored in the workspace, never touching image files, undoable, applied wherever a
dataset is loaded, recorded by the runs made without the excluded images."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from core.base.errors import DatasetError
from core.data.datasets import dataset_summary, list_datasets, load_dataset, oxford17_prepared, prepare_dataset
from core.data.exclusions import (
    can_undo,
    exclude_images,
    excluded_images,
    exclusions_path,
    include_images,
    relative_path,
    undo_exclusions,
)


def _tree_digest(folder) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_exclude_include_and_undo_restore_the_previous_state(tiny_workspace):
    dataset = load_dataset("synthetic", tiny_workspace)
    before_files = _tree_digest(dataset.root)
    paths = [relative_path(dataset, row) for row in (0, 5, 40)]

    assert excluded_images(tiny_workspace, "synthetic") == {} and not can_undo(tiny_workspace, "synthetic")
    exclude_images(tiny_workspace, "synthetic", paths[:2], reason="label issue")
    exclude_images(tiny_workspace, "synthetic", paths[1:], reason="duplicate")
    state = excluded_images(tiny_workspace, "synthetic")
    assert sorted(state) == sorted(paths)
    assert state[paths[1]]["reason"] == "label issue"  # the first reason stays
    assert exclusions_path(tiny_workspace, "synthetic").is_relative_to(tiny_workspace.root)

    include_images(tiny_workspace, "synthetic", [paths[0]])
    assert sorted(excluded_images(tiny_workspace, "synthetic")) == sorted(paths[1:])
    assert sorted(undo_exclusions(tiny_workspace, "synthetic")) == sorted(paths)  # back to before the include
    assert sorted(undo_exclusions(tiny_workspace, "synthetic")) == sorted(paths[:2])
    assert undo_exclusions(tiny_workspace, "synthetic") == {}
    with pytest.raises(DatasetError, match="no exclusion change to undo"):
        undo_exclusions(tiny_workspace, "synthetic")
    assert _tree_digest(dataset.root) == before_files  # no image file was touched


def test_bad_paths_are_refused(tiny_workspace):
    for bad in ("/etc/passwd", "../outside.jpg", ""):
        with pytest.raises(DatasetError, match="relative to the dataset folder"):
            exclude_images(tiny_workspace, "synthetic", [bad])
    assert not exclusions_path(tiny_workspace, "synthetic").exists()


def test_loading_skips_excluded_images_and_renumbers_the_splits(tiny_workspace):
    whole = load_dataset("synthetic", tiny_workspace)
    rows = [0, 9, 100]
    paths = [relative_path(whole, r) for r in rows]
    exclude_images(tiny_workspace, "synthetic", paths)
    for dataset in (load_dataset("synthetic", tiny_workspace), prepare_dataset("synthetic", tiny_workspace)):
        assert dataset.excluded == tuple(sorted(paths))
        assert len(dataset.image_paths) == len(whole.image_paths) - 3
        assert not set(paths) & {relative_path(dataset, r) for r in range(len(dataset.image_paths))}
        for part, part_rows in dataset.split("1").items():
            # Every remaining image keeps its label and its part.
            expected = [relative_path(whole, r) for r in whole.split("1")[part] if r not in rows]
            assert [relative_path(dataset, r) for r in part_rows] == expected
            assert np.array_equal(
                dataset.labels[part_rows], whole.labels[[r for r in whole.split("1")[part] if r not in rows]]
            )
    assert load_dataset("synthetic", tiny_workspace, exclusions=False).fingerprint == whole.fingerprint


def test_exclusion_round_trip_through_a_run(tiny_workspace):
    from core.probing.experiment import ExperimentConfig, run_experiment
    from core.probing.heads import HeadConfig
    from core.runs.registry import RunRegistry

    whole = load_dataset("synthetic", tiny_workspace)
    counts = dataset_summary(whole)["counts"]
    train = whole.split("1")["train"]
    paths = [relative_path(whole, int(r)) for r in train[[0, 10, 20]]]
    exclude_images(tiny_workspace, "synthetic", paths, reason="test")
    dataset = load_dataset("synthetic", tiny_workspace)
    assert dataset.fingerprint != whole.fingerprint
    assert sum(map(sum, dataset_summary(dataset)["counts"]["1"].values())) == len(whole.image_paths) - 3

    config = ExperimentConfig(
        dataset="synthetic", split="1", backbone="efficientnet_lite0", weights="random", head=HeadConfig(epochs=1)
    )
    run = run_experiment(config, workspace=tiny_workspace)
    assert run["status"] == "completed"
    assert sorted(run["config"]["excluded_images"]) == sorted(paths)
    assert run["dataset_fingerprint"] == dataset.fingerprint
    predictions = RunRegistry(tiny_workspace.registry_path).predictions(run["id"])
    assert len(predictions) == len(whole.split("1")["test"])  # only training images were excluded

    include_images(tiny_workspace, "synthetic", paths)
    back = load_dataset("synthetic", tiny_workspace)
    assert back.fingerprint == whole.fingerprint and back.excluded == ()
    assert dataset_summary(back)["counts"] == counts


def test_oxford17_state_has_one_test_and_one_wording(workspace):
    assert not oxford17_prepared(workspace)
    entry = next(e for e in list_datasets(workspace) if e.key == "oxford17")
    assert not entry.prepared and entry.state == "not prepared: downloaded (about 60 MB) when first used"
    folder = workspace.data_root / "oxford17"
    (folder / "jpg").mkdir(parents=True)
    assert not oxford17_prepared(workspace)  # photos without the split file: not prepared (load would fail)
    (folder / "datasplits.mat").write_bytes(b"")
    assert oxford17_prepared(workspace)
    assert next(e for e in list_datasets(workspace) if e.key == "oxford17").state == "prepared"
