"""The prediction path shared by the Classify page and ``python -m core predict``.

Every catalogue file (good photos in every mode, and every kind of bad file) goes through
``Predictor.predict`` in one batch, as the page sends uploads; the CLI must agree with it; a run's
predictions on its own test images must reproduce the ones stored when it was trained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.__main__ import main
from core.backbones.registry import WeightsSource
from core.base.csv_export import csv_text
from core.base.errors import FlowerProbeError, MissingFileError
from core.predict import classify as predict_module
from core.predict.classify import (
    NEIGHBOURS,
    TOP_K,
    FeaturesMissingError,
    Prediction,
    Predictor,
    default_run,
    summary_rows,
)
from core.probing.calibration import softmax
from core.runs.files import RunFiles
from core.runs.registry import RunRegistry
from tests.helpers.image_catalogue import HOSTILE_FILE_NAMES, write_catalogue

REPO = Path(__file__).resolve().parents[3]


def _run_id(workspace, backbone: str) -> int:
    return next(
        r["id"] for r in RunRegistry(workspace.registry_path).list_runs(status="completed") if r["backbone"] == backbone
    )


def _snapshot(folder: Path, *, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (but ``skip``) with its size and modification time."""
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and (skip is None or skip not in path.parents)
    }


@pytest.fixture
def private_tmpdir(tmp_path, monkeypatch) -> Path:
    """An empty folder that tempfile and child processes use as the system temp dir for this test."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_every_catalogue_file_in_one_batch(populated_workspace, tmp_path, private_tmpdir):
    catalogue = write_catalogue(tmp_path / "catalogue")
    # Uploads reach the page as bytes with the browser's file name; a hostile name rides along.
    uploads = [(e.filename, (tmp_path / "catalogue" / e.filename).read_bytes()) for e in catalogue.values()]
    hostile = HOSTILE_FILE_NAMES[0] + "\nsecond line.jpg"
    uploads.append((hostile, b"not an image at all"))
    before_outside, before_workspace = _snapshot(tmp_path), _snapshot(populated_workspace.root)

    predictor = Predictor.from_run(_run_id(populated_workspace, "efficientnet_lite0"), workspace=populated_workspace)
    predictions = predictor.predict(uploads)

    assert [p.name for p in predictions] == [name for name, _ in uploads]
    expected_ok = {e.filename: e.expect_ok for e in catalogue.values()} | {hostile: False}
    for prediction in predictions:
        if expected_ok[prediction.name]:
            assert prediction.ok, prediction.error
            assert len(prediction.top) == TOP_K
            assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
            probabilities = [p for _, p in prediction.top]
            assert probabilities == sorted(probabilities, reverse=True)
            assert prediction.top[0][1] == pytest.approx(prediction.probabilities.max())
            assert prediction.features.shape == (1280,)
            distances = [n.distance for n in prediction.neighbours]
            assert len(distances) == NEIGHBOURS and distances == sorted(distances) and 0 <= distances[0] <= 2
            assert all(n.path.is_file() and n.class_name in predictor.class_names for n in prediction.neighbours)
        else:
            assert not prediction.ok and prediction.top == () and prediction.predicted_class is None
            assert "\n" not in prediction.error and "\r" not in prediction.error
            assert prediction.name.split("\n")[0] in prediction.error, prediction.error
    # Nothing was written: not next to the uploads, not in the temp dir, not in the workspace
    # (except the registry's SQLite journal, which opening the registry may touch).
    assert _snapshot(tmp_path) == before_outside
    assert list(private_tmpdir.iterdir()) == []
    changed = {path for path, stat in _snapshot(populated_workspace.root).items() if before_workspace.get(path) != stat}
    assert {Path(path).name for path in changed} <= {"runs.sqlite-wal", "runs.sqlite-shm", "runs.sqlite"}


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet50"])
def test_predictions_on_test_images_reproduce_the_stored_ones(populated_workspace, backbone):
    run_id = _run_id(populated_workspace, backbone)
    registry = RunRegistry(populated_workspace.registry_path)
    stored = registry.predictions(run_id)
    photos = RunFiles(registry.get_run(run_id), populated_workspace).images(
        [s["path"] for s in stored]
    )  # stored relative
    predictor = Predictor.from_run(run_id, workspace=populated_workspace)
    predictions = predictor.predict([(photo.name, photo) for photo in photos])
    assert [predictor.class_names.index(p.predicted_class) for p in predictions] == [s["predicted"] for s in stored]
    # The run stores its head's probabilities as trained; predict divides the logits by the temperature fitted on
    # validation (saved with the head). log p is the logits up to a constant per image, so softmax(T log p) of
    # predict's probabilities must give the stored ones back (rounded to 6 decimals; the forward is the same).
    # This direction, not softmax(log(stored) / T): stored probabilities rounded to 0 have lost their logits.
    assert predictor.calibrated and predictor.temperature == pytest.approx(
        registry.get_run(run_id)["metrics"]["calibration"]["temperature"]
    )
    with np.errstate(divide="ignore"):
        log_calibrated = np.log(np.stack([p.probabilities for p in predictions]).astype(np.float64))
    as_trained = softmax(log_calibrated * predictor.temperature)
    np.testing.assert_allclose(as_trained, [s["probabilities"] for s in stored], atol=2e-5)


# heavy for -m "not slow" (under 3 min on 2 cores): a CLI subprocess building the backbone again
@pytest.mark.slow
def test_cli_and_page_give_the_same_prediction(populated_workspace, tmp_path):
    run_id = _run_id(populated_workspace, "efficientnet_lite0")
    registry = RunRegistry(populated_workspace.registry_path)
    image = RunFiles(registry.get_run(run_id), populated_workspace).image(registry.predictions(run_id)[0]["path"])
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    env = {**os.environ, "FLOWER_PROBE_WORKSPACE": str(populated_workspace.root)}
    result = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--run", str(run_id), "--json", str(image), str(bad)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    cli_good, cli_bad = json.loads(result.stdout)

    page = Predictor.from_run(run_id, workspace=populated_workspace).predict([(str(image), image.read_bytes())])[0]
    assert cli_good["file"] == str(image) and cli_good["error"] is None
    assert [t["class"] for t in cli_good["top"]] == [name for name, _ in page.top]
    np.testing.assert_allclose([t["probability"] for t in cli_good["top"]], [p for _, p in page.top], atol=1e-5)
    assert [n["path"] for n in cli_good["neighbours"]] == [str(n.path) for n in page.neighbours]
    assert cli_bad["top"] == [] and "notes.jpg" in cli_bad["error"]


def test_cli_fails_when_no_image_classifies(populated_workspace, tmp_path, capsys):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    status = main(["predict", "--run", str(_run_id(populated_workspace, "resnet50")), str(empty)])
    out, err = capsys.readouterr()
    assert status == 2
    assert "empty.png" in out and "0 bytes" in out
    assert "None of the 1 image(s) could be classified" in err


def test_changed_weights_are_refused(populated_workspace, monkeypatch):
    run_id = _run_id(populated_workspace, "efficientnet_lite0")
    monkeypatch.setattr(  # the one weights resolver the run's resolved backbone locates its weights with
        "core.backbones.resolved.locate_weights",
        lambda *a, **k: WeightsSource("file", Path("/w.pth"), "sha256:0000000000000000"),
    )
    with pytest.raises(FlowerProbeError, match="changed since"):
        Predictor.from_run(run_id, workspace=populated_workspace)


def test_unknown_run_and_bad_arguments_are_refused(populated_workspace):
    with pytest.raises(FlowerProbeError, match="no run with id 9999"):
        Predictor.from_run(9999, workspace=populated_workspace)
    with pytest.raises(FlowerProbeError, match="run_id must be a positive whole number"):
        Predictor.from_run("1", workspace=populated_workspace)


def test_moved_workspace_works_and_a_missing_head_is_named(populated_workspace, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(populated_workspace.root, moved, copy_function=shutil.copyfile)  # a copy without file dates
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(moved))
    from core.base.workspace import Workspace

    workspace = Workspace.from_env()
    run_id = _run_id(workspace, "resnet50")
    predictor = Predictor.from_run(run_id, workspace=workspace)
    assert predictor.dataset.root.is_relative_to(moved)
    head = workspace.heads_dir / f"run-{run_id}.safetensors"
    head.unlink()
    with pytest.raises(MissingFileError, match=head.name):
        Predictor.from_run(run_id, workspace=workspace)


def _record(run_id, dataset, acc, created, valid=None):
    return {
        "id": run_id,
        "status": "completed",
        "dataset_key": dataset,
        "test_acc": acc,
        "created_at": created,
        "metrics": {"valid_acc": valid},
    }


def test_default_run_is_the_best_on_validation_on_the_most_recent_dataset():
    runs = [
        _record(1, "oxford17", 99.0, 1.0, valid=99.0),
        _record(2, "synthetic", 40.0, 2.0, valid=45.0),
        _record(3, "synthetic", 70.0, 3.0, valid=60.0),  # the best test accuracy, not the best on validation
        _record(4, "synthetic", 55.0, 4.0, valid=80.0),
        {**_record(5, "synthetic", None, 5.0), "status": "failed"},
    ]
    assert default_run(runs)["id"] == 4  # chosen on validation: picking by test would report a test figure it used
    assert default_run([]) is None


def test_csv_quotes_formulas_from_file_names_and_has_no_none_cells():
    rows = summary_rows(
        [
            Prediction(name='=HYPERLINK("http://x")', error="not an image"),
            Prediction(name="ok.jpg", top=(("Iris", 0.5),)),
        ]
    )
    text = csv_text(rows)
    assert text.splitlines()[0] == "file,predicted class,confidence,nearest training distance,unfamiliar,error"
    assert "'=HYPERLINK" in text and "\nok.jpg,Iris,0.5,,False," in text
    assert "None" not in text


def test_unfamiliar_threshold_is_the_far_out_fence_of_training_nearest_neighbour_distances():
    from core.maps.projection import cosine_neighbours
    from core.predict.classify import unfamiliar_threshold

    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 8)).astype(np.float32)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances = 1 - unit @ unit.T
    np.fill_diagonal(distances, np.inf)
    nearest = distances.min(axis=1)
    q1, q3 = np.percentile(nearest, [25, 75])
    assert unfamiliar_threshold(features) == pytest.approx(q3 + 3 * (q3 - q1), rel=1e-5)
    assert cosine_neighbours(features, features, k=1)[1].max() < 1e-5  # each image finds itself first


def test_a_foreign_photo_is_flagged_unfamiliar_and_a_test_photo_is_not(populated_workspace, tmp_path):
    from PIL import Image

    predictor = Predictor.from_run(_run_id(populated_workspace, "efficientnet_lite0"), workspace=populated_workspace)
    dataset = predictor.dataset
    test_rows = dataset.split(predictor.run["split"])["test"][:6]
    # A foreign image: a black-and-white checkerboard, nothing like a flower painting.
    board = (np.indices((256, 256)).sum(axis=0) // 32 % 2 * 255).astype(np.uint8)
    Image.fromarray(board).convert("RGB").save(tmp_path / "board.png")
    results = predictor.predict(
        [("board.png", tmp_path / "board.png")] + [(str(r), dataset.image_paths[r]) for r in test_rows]
    )
    foreign, *in_domain = results
    assert foreign.unfamiliar and foreign.neighbours[0].distance > predictor.unfamiliar_distance
    assert not any(p.unfamiliar for p in in_domain), [p.neighbours[0].distance for p in in_domain]
    assert foreign.to_dict()["unfamiliar"] is True


# heavy for -m "not slow" (under 3 min on 2 cores): a re-extraction
@pytest.mark.slow
def test_missing_training_features_are_said_not_extracted_in_the_caller(populated_workspace, tmp_path, monkeypatch):
    moved = tmp_path / "workspace"
    shutil.copytree(populated_workspace.root, moved)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(moved))
    from core.base.workspace import Workspace

    workspace = Workspace.from_env()
    for path in workspace.features_dir.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    run_id = _run_id(workspace, "efficientnet_lite0")

    def no_extraction(*args, **kwargs):
        raise AssertionError("Predictor.from_run must not extract features unless asked")

    monkeypatch.setattr(predict_module, "extract_features", no_extraction)
    with pytest.raises(FeaturesMissingError, match="no longer cached") as error:
        Predictor.from_run(run_id, workspace=workspace)
    assert error.value.extraction["backbone"].spec == "efficientnet_lite0"  # the run's backbone, resolved once
    monkeypatch.undo()
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(moved))
    # What the page queues as a job: afterwards the run classifies from the cache.
    from core.features.extract import extract_features

    extract_features(**error.value.extraction)
    assert len(Predictor.from_run(run_id, workspace=workspace).reference_features) > 0


def test_a_shared_backbone_is_never_changed_by_a_predictor(populated_workspace):
    import torch

    from core.backbones.registry import build_backbone

    shared, _ = build_backbone("resnet50", weights="random", workspace=populated_workspace)
    before = {name: (p.dtype, p.data_ptr()) for name, p in shared.named_parameters()}
    predictor = Predictor.from_run(
        _run_id(populated_workspace, "resnet50"), workspace=populated_workspace, backbone_loader=lambda run: shared
    )
    assert {name: (p.dtype, p.data_ptr()) for name, p in shared.named_parameters()} == before
    assert all(p.dtype == torch.float32 for p in shared.parameters())
    assert predictor.model is not shared or predictor.precision == "fp32"
