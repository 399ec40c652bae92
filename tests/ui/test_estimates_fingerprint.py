"""Duration estimates count a feature cache only while it matches the data: an exclusion changes the fingerprint, so
the next run extracts again and the estimate says so (it used to promise "reuses 2 cached feature sets")."""

from __future__ import annotations

from core.data.datasets import load_dataset
from core.data.exclusions import exclude_images, relative_path


def test_an_exclusion_makes_the_estimate_stop_counting_the_old_cache(populated_copy):
    from ui.launch import _cached_features, expected_duration

    cached = _cached_features("synthetic")
    assert ("efficientnet_lite0", "pretrained") in cached and ("resnet50", "random") in cached
    before = expected_duration(dataset="synthetic", backbones=["efficientnet_lite0"])
    assert [basis for _, _, basis in before.steps if basis == "cached"]

    dataset = load_dataset("synthetic", populated_copy)
    exclude_images(populated_copy, "synthetic", [relative_path(dataset, 0)], reason="test")
    assert _cached_features("synthetic") == set()
    after = expected_duration(dataset="synthetic", backbones=["efficientnet_lite0"])
    assert not [basis for _, _, basis in after.steps if basis == "cached"] and after.seconds > before.seconds
