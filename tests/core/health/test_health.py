"""Data health (core.health.checks): the maths against plain numpy, bad input, the cache and the CLI, and, on Synthetic
Flowers copied with planted problems (flipped labels, train/test copies, foreign images), what two backbones find.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.base.errors import DatasetError, FlowerProbeError, MissingFileError
from core.base.workspace import Workspace
from core.data.datasets import load_dataset
from core.health.checks import (
    CSV_COLUMNS,
    HealthConfig,
    analyse,
    auto_duplicate_threshold,
    byte_duplicate_groups,
    compare_health,
    dataset_health,
    kth_training_distance,
    neighbour_pairs,
    planted_scores,
    unit_rows,
)

# ----------------------------------------------------------------------------------------------- maths


def test_neighbour_pairs_match_a_brute_force_similarity_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 16))
    x[7] = x[3]  # a byte-identical copy: either may list the other first
    unit = unit_rows(x)
    a, b, similarity, nearest = neighbour_pairs(unit, k=3)
    full = unit @ unit.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(nearest, full.max(axis=1), atol=1e-5)
    assert np.all(a < b)
    np.testing.assert_allclose(similarity, full[a, b], atol=1e-5)
    expected = {tuple(sorted((i, int(j)))) for i in range(40) for j in np.argsort(-full[i])[:3]}
    assert set(zip(a.tolist(), b.tolist())) == expected
    assert (3, 7) in expected


def test_kth_training_distance_matches_numpy():
    rng = np.random.default_rng(1)
    unit = unit_rows(rng.normal(size=(30, 8)))
    train = np.arange(30) < 20
    distance = kth_training_distance(unit, train, k=4)
    cosine = 1 - unit @ unit[train].T
    for i in range(30):
        others = np.delete(cosine[i], i) if train[i] else cosine[i]  # a training image is not its own neighbour
        assert distance[i] == pytest.approx(np.sort(others)[3], abs=1e-5)


def test_auto_duplicate_threshold_separates_copies_from_the_bulk():
    rng = np.random.default_rng(2)
    typical = 1 - np.exp(rng.normal(np.log(0.15), 0.2, size=500))  # nearest-neighbour similarities around 0.85
    with_copies = np.concatenate([typical, [1.0, 1.0, 0.995, 0.99]])
    threshold = auto_duplicate_threshold(with_copies, z=3)
    # Independent: 1 - exp(median - 3 * 1.4826 * MAD) of the log distances.
    log_d = np.log(np.clip(1 - with_copies, 1e-6, None))
    mad = np.median(np.abs(log_d - np.median(log_d)))
    assert threshold == pytest.approx(1 - np.exp(np.median(log_d) - 3 * 1.4826 * mad))
    assert (typical >= threshold).mean() < 0.01 and np.all(with_copies[-4:] >= threshold)


def test_byte_duplicate_groups():
    assert sorted(byte_duplicate_groups(["a", "b", "a", "c", "b", "a"])) == [[0, 2, 5], [1, 4]]
    assert byte_duplicate_groups(["a", "b"]) == []


# ----------------------------------------------------------------------------------------------- on a tiny dataset


def _clustered_features(dataset, *, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    """Hand-made features: one well separated cluster per class (the test does not need a backbone)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(dataset.num_classes, 32)) * 3
    return (centres[dataset.labels] + rng.normal(scale=noise, size=(len(dataset.labels), 32))).astype(np.float32)


def test_analyse_finds_a_flipped_label_and_a_copy(tiny_workspace):
    dataset = load_dataset("synthetic", tiny_workspace)
    features = _clustered_features(dataset)
    train = dataset.split("1")["train"]
    flipped = int(train[0])
    labels = dataset.labels.copy()
    labels[flipped] = (labels[flipped] + 1) % dataset.num_classes
    from dataclasses import replace

    wrong = replace(dataset, labels=labels)
    test = dataset.split("1")["test"]
    test_row = int(test[dataset.labels[test] == dataset.labels[train[5]]][0])
    features[int(train[5])] = features[test_row] + 1e-4  # a near copy of a test image of its class, in train
    result = analyse(wrong, features, np.arange(len(labels)), config=HealthConfig(folds=3))
    assert result["label_issues"][0]["image"] == flipped and result["label_issues"][0]["flagged"]
    assert result["label_issues"][0]["suggested"] == dataset.labels[flipped]
    assert all(
        issue["image"] not in dataset.split("1")["test"] for issue in result["label_issues"]
    )  # test stays untouched
    near = [p for p in result["pairs"] if {p["a"], p["b"]} == {int(train[5]), test_row}]
    assert near and near[0]["similarity"] >= result["duplicate_threshold"]


def test_bad_input_says_what_to_do(tiny_workspace):
    dataset = load_dataset("synthetic", tiny_workspace)  # 8 a class: 4 train + 2 val = 6 for the folds
    features = _clustered_features(dataset)
    rows = np.arange(len(dataset.labels))
    with pytest.raises(DatasetError, match=r"too small for folds=10.*Use folds=6 or fewer"):
        analyse(dataset, features, rows, config=HealthConfig(folds=10))
    fit = np.concatenate([dataset.split("1")["train"], dataset.split("1")["val"]])
    lonely = fit[dataset.labels[fit] == 0][1:]  # class 0 keeps one training/validation image
    keep = np.setdiff1d(rows, lonely)
    with pytest.raises(DatasetError, match=rf"'{dataset.class_names[0]}'.* single image"):
        analyse(dataset, features[keep], keep, config=HealthConfig(folds=2))
    with pytest.raises(FlowerProbeError, match="folds must be an integer of at least 2, got 1"):
        analyse(dataset, features, rows, config=HealthConfig(folds=1))
    with pytest.raises(FlowerProbeError, match="duplicate_threshold must be"):
        HealthConfig(duplicate_threshold=1.5).validate()


def test_missing_features_say_how_to_compute_them(tiny_workspace):
    with pytest.raises(MissingFileError, match=r"No cached efficientnet_lite0 features.*--extract"):
        dataset_health("synthetic", "efficientnet_lite0", workspace=tiny_workspace, weights="random")


# heavy for -m "not slow" (under 3 min on 2 cores): extraction and reports through the CLI
@pytest.mark.slow
def test_report_is_cached_and_lists_exclusions(tiny_workspace, capsys):
    from core.__main__ import main
    from core.data.exclusions import exclude_images

    first = dataset_health(
        "synthetic",
        "efficientnet_lite0",
        workspace=tiny_workspace,
        weights="random",
        extract=True,
        config=HealthConfig(folds=3),
    )
    assert not first.from_cache and first.backbone == "efficientnet_lite0" and first.weights == "random"
    assert set(first.timings) >= {"features_s", "label_issues_s", "neighbours_s", "outliers_s", "total_s"}
    again = dataset_health(
        "synthetic", "efficientnet_lite0", workspace=tiny_workspace, weights="random", config=HealthConfig(folds=3)
    )
    assert again.from_cache and again.to_dict() == first.to_dict()
    assert list((tiny_workspace.root / "health").glob("*.json"))

    excluded = first.paths[:2]
    exclude_images(tiny_workspace, "synthetic", excluded, reason="test")
    after = dataset_health(
        "synthetic", "efficientnet_lite0", workspace=tiny_workspace, weights="random", config=HealthConfig(folds=3)
    )
    assert not after.from_cache and after.fingerprint != first.fingerprint
    assert [p for p, _ in after.skipped] == sorted(excluded) and not set(excluded) & set(after.paths)
    assert len(after.paths) == len(first.paths) - 2

    csv_path = tiny_workspace.root / "health.csv"
    code = main(
        [
            "health",
            "--dataset",
            "synthetic",
            "--backbone",
            "efficientnet_lite0",
            "--weights",
            "random",
            "--folds",
            "3",
            "--csv",
            str(csv_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "label issues" in out and "outliers" in out
    text = csv_path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(after.flagged_rows())
    assert all(not Path(r["path"]).is_absolute() for r in rows)


# ----------------------------------------------------------------------------------------------- planted problems

IMAGES_PER_CLASS = (
    20  # 10 train / 5 val / 5 test a class: enough for 5 folds, a quarter of the full set's extraction time
)


def _foreign_image(index: int, rng: np.random.Generator) -> Image.Image:
    """Another domain: noise, stripes, checkerboards and flat gradients, nothing like a flower."""
    size = 256
    if index % 3 == 0:
        array = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    elif index % 3 == 1:
        period = 6 + 5 * index
        stripes = ((np.indices((size, size)).sum(axis=0) // period) % 2 * 255).astype(np.uint8)
        array = np.repeat(stripes[..., None], 3, axis=2)
    else:
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        array = np.stack(
            [np.add.outer(ramp, ramp) / 2, np.full((size, size), 40.0 * index), np.add.outer(ramp, -ramp) % 255], axis=2
        )
        array = array.clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)


def plant_problems(source: Path, destination: Path, *, seed: int = 1) -> dict:
    """Copy Synthetic Flowers to ``destination`` and plant problems; returns them as relative paths.

    5 % of training labels flipped (file moved to another class folder), 10 test images copied into train (5 byte
    copies, 5 re-encoded: 3 re-saved at JPEG quality 85, 2 resized to 125 %), 5 foreign images filed in train.
    """
    shutil.copytree(source, destination)
    rng = np.random.default_rng(seed)
    classes = sorted(p.name for p in (destination / "train").iterdir())
    train = sorted((destination / "train").glob("*/*.jpg"))
    planted: dict = {"label": [], "byte": [], "reencoded": [], "outlier": []}
    for i in rng.choice(len(train), size=round(0.05 * len(train)), replace=False):
        moved = destination / "train" / rng.choice([c for c in classes if c != train[i].parent.name]) / train[i].name
        train[i].rename(moved)
        planted["label"].append(moved.relative_to(destination).as_posix())
    test = sorted((destination / "test").glob("*/*.jpg"))
    for n, i in enumerate(rng.choice(len(test), size=10, replace=False)):
        original = test[i]
        copy = destination / "train" / original.parent.name / f"copy-{n}-{original.name}"
        if n < 5:
            shutil.copyfile(original, copy)
            kind = "byte"
        else:
            image = Image.open(original).convert("RGB")
            if n >= 8:
                image = image.resize((image.width * 5 // 4, image.height * 5 // 4), Image.Resampling.LANCZOS)
            image.save(copy, quality=85 if n < 8 else 90)
            kind = "reencoded"
        planted[kind].append((copy.relative_to(destination).as_posix(), original.relative_to(destination).as_posix()))
    for n in range(5):
        foreign = destination / "train" / rng.choice(classes) / f"foreign-{n}.jpg"
        _foreign_image(n, rng).save(foreign, quality=90)
        planted["outlier"].append(foreign.relative_to(destination).as_posix())
    planted["duplicate"] = planted["byte"] + planted["reencoded"]
    return planted


@pytest.fixture(scope="module")
def planted_reports(tmp_path_factory):
    """Planted Synthetic Flowers (256 px, 20 a class) and the health reports of a pretrained and a random-weight
    EfficientNet-Lite0 (the features extracted once for the module)."""
    from core.data.synthetic import generate_synthetic_flowers

    root = tmp_path_factory.mktemp("health") / "workspace"
    ws = Workspace(root=root, data_root=root / "datasets")
    clean = generate_synthetic_flowers(root / "clean", seed=0, images_per_class=IMAGES_PER_CLASS, image_size=256)
    planted = plant_problems(clean, ws.data_root / "planted")
    reports = {
        weights: dataset_health("folder:planted", "efficientnet_lite0", workspace=ws, weights=weights, extract=True)
        for weights in ("pretrained", "random")
    }
    return ws, planted, reports


@pytest.mark.slow
def test_planted_problems_are_found_with_pretrained_features(planted_reports):
    ws, planted, reports = planted_reports
    report = reports["pretrained"]
    scores = planted_scores(report, planted)
    print("\npretrained EfficientNet-Lite0:", json.dumps(scores, indent=1), "timings", report.timings)

    # Flipped labels: recall >= 0.8 among the top 2 x (number flipped) candidates.
    assert len(planted["label"]) == round(0.05 * (IMAGES_PER_CLASS // 2) * 17)
    top = {report.paths[i["image"]] for i in report.label_issues[: 2 * len(planted["label"])]}
    assert len(top & set(planted["label"])) >= 0.8 * len(planted["label"])

    duplicates = {frozenset((report.paths[p["a"]], report.paths[p["b"]])): p for p in report.duplicates()}
    for copy, original in planted["byte"]:
        pair = duplicates[frozenset((copy, original))]
        assert pair["exact"] and pair["leakage"] and {pair["part_a"], pair["part_b"]} == {"train", "test"}
    reencoded = [duplicates.get(frozenset(pair)) for pair in planted["reencoded"]]
    assert sum(p is not None and p["leakage"] for p in reencoded) >= 0.8 * len(planted["reencoded"])

    top_outliers = {report.paths[o["image"]] for o in report.outliers[:20]}
    assert set(planted["outlier"]) <= top_outliers


@pytest.mark.slow
def test_random_weights_are_reported_and_compared(planted_reports):
    ws, planted, reports = planted_reports
    rows = compare_health({f"efficientnet_lite0 ({w})": r for w, r in reports.items()}, planted=planted)
    print("\n" + json.dumps(rows, indent=1))
    assert [r["backbone"] for r in rows] == ["efficientnet_lite0 (pretrained)", "efficientnet_lite0 (random)"]
    for row, report in zip(rows, reports.values()):
        assert row["label issues"] == sum(i["flagged"] for i in report.label_issues)
        assert 0 <= row["label_recall_at_2n"] <= 1
    # Byte copies are found from the hashes whatever the backbone.
    random_pairs = {
        frozenset((reports["random"].paths[p["a"]], reports["random"].paths[p["b"]]))
        for p in reports["random"].duplicates()
    }
    assert all(frozenset(pair) in random_pairs for pair in planted["byte"])
