"""core.agreement.pairs: matching two feature sets image by image, from the cache and from recorded runs, and the
messages for different images, the same features twice and missing caches."""

from __future__ import annotations

import numpy as np
import pytest

from core.agreement.measures import neighbour_agreement
from core.agreement.pairs import (
    FeatureSource,
    align_by_image,
    check_distinct,
    load_feature_pair,
    paired_correct,
    run_dataset,
    run_feature_pair,
)
from core.base.errors import FlowerProbeError, MissingFileError
from core.data.datasets import load_dataset
from core.data.exclusions import exclude_images, relative_path
from core.features.extract import extract_features
from core.runs.registry import RunRegistry


def test_align_by_image_keeps_the_common_images_in_a_order():
    index_a, index_b = align_by_image(["x", "y", "z", "w"], ["w", "q", "x", "z"])
    assert index_a.tolist() == [0, 2, 3]
    assert index_b.tolist() == [2, 3, 0]


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (["x", "x"], ["x"], "keys_a must name each image once"),
        (["x"], ["y", "y"], "keys_b must name each image once"),
        (["x", "y"], ["z"], "share no image"),
    ],
)
def test_align_by_image_refuses_repeats_and_disjoint_sets(a, b, message):
    with pytest.raises(FlowerProbeError, match=message):
        align_by_image(a, b)


def test_check_distinct_names_backbones():
    lite = FeatureSource("efficientnet_lite0", "pretrained", "gap", "tag1", "fp32")
    check_distinct(lite, FeatureSource("efficientnet_lite0", "random", "gap", "random", "fp32"))
    check_distinct(lite, FeatureSource("efficientnet_lite0", "pretrained", "gap+max", "tag1", "fp32"))
    with pytest.raises(FlowerProbeError, match="backbones must name two different feature sets"):
        check_distinct(lite, FeatureSource("efficientnet_lite0", "pretrained", "gap", "tag1", "bf16"))


def test_paired_correct_matches_test_images_by_key():
    a, b, only_a, only_b = paired_correct(["p", "q", "r"], [1, 0, 1], ["r", "p", "s"], [0, 1, 1])
    assert a.tolist() == [True, True] and b.tolist() == [True, False]  # images p and r
    assert (only_a, only_b) == (1, 1)
    with pytest.raises(FlowerProbeError, match="one entry per test image"):
        paired_correct(["p"], [1, 0], ["p"], [1])


def test_load_feature_pair_reads_two_caches_and_matches_them_after_exclusions(populated_copy):
    ws = populated_copy
    pair = load_feature_pair("synthetic", "efficientnet_lite0", "resnet50", weights_b="random", workspace=ws)
    dataset = load_dataset("synthetic", ws)
    assert pair.n_images == len(dataset.image_paths) == 136
    assert pair.note == ""
    assert pair.features_a.shape == (136, 1280) and pair.features_b.shape == (136, 2048)
    np.testing.assert_array_equal(pair.rows_a, pair.rows_b)
    lite = extract_features(dataset, "efficientnet_lite0", workspace=ws)  # from the cache: no forward pass
    assert lite.from_cache
    np.testing.assert_array_equal(pair.features_a, lite.select(pair.rows_a)[0])
    assert neighbour_agreement(pair.features_a, pair.features_b).shape == (136,)

    # Five images excluded since: the whole dataset's caches serve, matched by path, the five left out.
    excluded = [relative_path(dataset, row) for row in (0, 1, 2, 50, 135)]
    exclude_images(ws, "synthetic", excluded, reason="test")
    after = load_feature_pair("synthetic", "efficientnet_lite0", "resnet50", weights_b="random", workspace=ws)
    now = load_dataset("synthetic", ws)
    assert after.n_images == 131 == len(now.image_paths)
    kept = [row for row in range(136) if relative_path(dataset, row) not in excluded]
    np.testing.assert_array_equal(after.features_a, lite.select(np.array(kept))[0])


def test_load_feature_pair_refuses_the_same_features_twice_and_missing_caches(populated_copy):
    ws = populated_copy
    with pytest.raises(FlowerProbeError, match="backbones must name two different feature sets"):
        load_feature_pair("synthetic", "efficientnet_lite0", "efficientnet_lite0", workspace=ws)
    with pytest.raises(MissingFileError, match="python -m core extract --dataset synthetic --backbone dinov2_vits14"):
        load_feature_pair("synthetic", "efficientnet_lite0", "dinov2_vits14@random", workspace=ws)  # never extracted


def test_run_feature_pair_uses_the_runs_features(populated_workspace):
    ws = populated_workspace
    runs = {run["backbone"]: run for run in RunRegistry(ws.registry_path).list_runs(status="completed", few_shot=False)}
    lite, resnet = runs["efficientnet_lite0"], runs["resnet50"]
    pair = run_feature_pair(lite, resnet, workspace=ws)
    assert pair.n_images == 136 and pair.note == ""
    assert pair.source_a.describe() == "efficientnet_lite0 · pretrained · gap features"
    assert pair.source_b.describe() == "resnet50 · random weights · gap features"
    with pytest.raises(FlowerProbeError, match="run_b must use other features than run_a"):
        run_feature_pair(lite, lite, workspace=ws)
    assert len(run_dataset(lite, ws).image_paths) == 136
    with pytest.raises(FlowerProbeError, match="run_a: run #.* was made on another version"):
        run_dataset({**lite, "dataset_fingerprint": "0" * 16}, ws, name="run_a")
    with pytest.raises(FlowerProbeError, match="run_b must be on the same dataset"):
        run_feature_pair(lite, {**resnet, "dataset_key": "folder:roses", "dataset_name": "roses"}, workspace=ws)


def test_runs_with_other_exclusions_are_matched_by_path_and_say_so(populated_workspace, monkeypatch):
    """Run B as if made after five images were excluded: its cache numbers the 131 others 0..130."""
    import dataclasses

    from core.agreement import pairs
    from core.data.exclusions import without_rows

    ws = populated_workspace
    runs = {run["backbone"]: run for run in RunRegistry(ws.registry_path).list_runs(status="completed", few_shot=False)}
    lite, resnet = runs["efficientnet_lite0"], runs["resnet50"]
    whole = load_dataset("synthetic", ws, exclusions=False)
    drop = np.zeros(len(whole.image_paths), bool)
    drop[[0, 1, 2, 50, 135]] = True
    later = without_rows(whole, drop)
    run_b = {
        **resnet,
        "dataset_fingerprint": later.fingerprint,
        "config": {**resnet["config"], "excluded_images": list(later.excluded)},
    }
    real = pairs._run_features

    def features(run, workspace, name):
        feature_set = real(run, workspace, name)
        if run is not run_b:
            return feature_set
        kept = np.flatnonzero(~drop)
        return dataclasses.replace(feature_set, features=feature_set.features[kept], rows=np.arange(len(kept)))

    monkeypatch.setattr(pairs, "_run_features", features)
    pair = run_feature_pair(lite, run_b, workspace=ws)
    assert pair.n_images == 131 and (pair.only_a, pair.only_b) == (5, 0)
    assert "5 only in efficientnet_lite0 · pretrained · gap features, 0 only in resnet50" in pair.note
    assert "the measures use the 131 images both hold" in pair.note
    # Matched by path: B's row r is the whole dataset's row kept[r], which A numbers as it is.
    kept = np.flatnonzero(~drop)
    np.testing.assert_array_equal(kept[pair.rows_b], pair.rows_a)
    np.testing.assert_array_equal(pair.features_b, real(resnet, ws, "run_b").features[pair.rows_a])
