"""Copies are photos that agree, not features that agree: no false leakage on clean Synthetic Flowers, every planted
copy found (byte copies, re-saved JPEGs, resized copies, as test_health.py plants them).

Hand-made features (one cluster per class) stand in for a backbone, and some different photos are given (nearly) the
same features on purpose: a backbone that puts two different photos together must not make them copies.
"""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from core.data.datasets import load_dataset
from core.data.exclusions import relative_path
from core.health.checks import COPY_SSIM, HealthConfig, HealthReport, analyse


def _report(dataset, features: np.ndarray) -> HealthReport:
    analysis = analyse(dataset, features, np.arange(len(dataset.labels)), config=HealthConfig(folds=3))
    return HealthReport(
        dataset_key=dataset.key,
        dataset_name=dataset.name,
        fingerprint="-",
        backbone="hand-made",
        weights="-",
        weights_tag="-",
        precision="fp32",
        variant=None,
        features_file="",
        config={"split": "1"},
        class_names=list(dataset.class_names),
        skipped=[],
        created_at=0.0,
        **analysis,
    )


def _features(dataset, *, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(dataset.num_classes, 32)) * 3
    return (centres[dataset.labels] + rng.normal(scale=0.3, size=(len(dataset.labels), 32))).astype(np.float32)


def _feature_twins(dataset, features: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Give ``count`` train photos the features of a test photo of their class (different photos, same features)."""
    split = dataset.split("1")
    twins = []
    for train_row in split["train"][:count]:
        same = split["test"][dataset.labels[split["test"]] == dataset.labels[train_row]]
        features[train_row] = features[same[0]] + 1e-4
        twins.append((int(train_row), int(same[0])))
    return twins


def test_clean_synthetic_flowers_have_no_copies_even_where_features_agree(tiny_workspace):
    dataset = load_dataset("synthetic", tiny_workspace)
    features = _features(dataset)
    twins = _feature_twins(dataset, features, 5)
    report = _report(dataset, features)
    pairs = report.duplicates()
    close = [p for p in pairs if (p["a"], p["b"]) in twins or (p["b"], p["a"]) in twins]
    assert len(close) == len(twins)  # the feature twins are listed, across train and test ...
    assert all(p["part_a"] != p["part_b"] and p["photo"] < COPY_SSIM for p in close)
    counts = report.counts()
    assert counts["copies"] == 0 and counts["leakage pairs"] == 0  # ... as near neighbours, not copies or leakage
    assert counts["near neighbours"] == len(pairs) >= len(twins)


def test_planted_copies_are_all_found_and_called_leakage(tiny_workspace):
    root = tiny_workspace.data_root / "synthetic-flowers"
    test_photos = sorted((root / "test").glob("*/*.jpg"))[::7][:6]
    planted = []
    for n, original in enumerate(test_photos):  # as test_health.plant_problems: byte, re-saved, resized copies
        copy = root / "train" / original.parent.name / f"copy-{n}-{original.name}"
        if n < 2:
            shutil.copyfile(original, copy)
        else:
            image = Image.open(original).convert("RGB")
            if n >= 4:
                image = image.resize((image.width * 5 // 4, image.height * 5 // 4), Image.Resampling.LANCZOS)
            image.save(copy, quality=85 if n < 4 else 90)
        planted.append((copy.relative_to(root).as_posix(), original.relative_to(root).as_posix()))
    dataset = load_dataset("synthetic", tiny_workspace)
    features = _features(dataset)
    position = {relative_path(dataset, row): row for row in range(len(dataset.labels))}
    for copy, original in planted:  # a backbone maps a copy next to its original
        features[position[copy]] = features[position[original]] + 1e-3
    report = _report(dataset, features)
    copies = {frozenset((report.paths[p["a"]], report.paths[p["b"]])): p for p in report.copies()}
    assert set(copies) == {frozenset(pair) for pair in planted}  # all found, nothing else called a copy
    assert all(p["leakage"] and {p["part_a"], p["part_b"]} == {"train", "test"} for p in copies.values())
    assert report.counts()["leakage pairs"] == len(planted)
