"""The deployable bundle: export + parity gate, the card's example run as written, bad input, hostile names."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from core.base.errors import FlowerProbeError
from core.base.text import markdown_text
from core.bundle import export as bundle_export
from core.bundle.export import FILES, ParityError, export_bundle
from core.bundle.run import Bundle
from core.data.images import load_image
from core.predict.classify import Predictor
from core.runs.registry import RunRegistry

HOSTILE = "**Bold** <script>alert(1)</script> [link](http://example.com) | `tick`"
# The graph's exporter in the tests that are not about the exporter: TorchScript exports in a third of dynamo's time.
FAST = "torchscript"


@pytest.fixture(scope="module")
def lite0_root(tmp_path_factory, tiny_synthetic_folder):
    """A workspace with one EfficientNet-Lite0 (pretrained, offline) mlp run on tiny Synthetic Flowers."""
    import shutil

    from core.base.workspace import Workspace
    from core.data.datasets import synthetic_folder
    from core.probing.experiment import run_comparison
    from core.probing.heads import HeadConfig

    root = tmp_path_factory.mktemp("bundle") / "workspace"
    built = Workspace(root=root, data_root=root / "datasets")
    shutil.copytree(tiny_synthetic_folder, synthetic_folder(built))
    run_comparison(dataset="synthetic", backbones=["efficientnet_lite0"], head=HeadConfig(epochs=2), workspace=built)
    return root


@pytest.fixture
def lite0_workspace(lite0_root, tmp_path, monkeypatch):
    """A private copy of ``lite0_root`` (tests change its registry)."""
    import shutil

    from core.base.workspace import Workspace

    root = tmp_path / "workspace"
    shutil.copytree(lite0_root, root)
    monkeypatch.setenv("FLOWER_PROBE_WORKSPACE", str(root))
    return Workspace.from_env()


def _run_id(workspace, backbone: str, protocol: str = "mlp") -> int:
    runs = RunRegistry(workspace.registry_path).list_runs(status="completed")
    return next(r["id"] for r in runs if r["backbone"] == backbone and r.get("protocol", "mlp") == protocol)


def _test_images(predictor: Predictor, count: int):
    rows = predictor.dataset.split(predictor.run["split"])["test"][:count]
    return [predictor.dataset.image_paths[int(r)] for r in rows]


def _card_example(folder) -> str:
    return re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(encoding="utf-8"), re.S).group(1)


def _check_bundle(workspace, run_id: int, out, tmp_path, *, exporter: str = "auto") -> None:
    result = export_bundle(run_id, workspace=workspace, out=out, exporter=exporter)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert [p["batch"] for p in result.parity] == [1, 7, 32]
    assert all(p["max_abs"] <= 1e-4 and p["top1_agree"] == p["images"] for p in result.parity)
    predictor = Predictor.from_run(run_id, workspace=workspace, device="cpu")
    assert json.loads((out / "labels.json").read_text(encoding="utf-8")) == list(predictor.class_names)
    # The card's example, extracted and executed as written, from the bundle's folder, on real photos.
    script = tmp_path / "classify.py"
    script.write_text(_card_example(out), encoding="utf-8")
    bundle = Bundle(out)
    for path in _test_images(predictor, 3):
        done = subprocess.run(
            [sys.executable, str(script), str(path)], cwd=out, capture_output=True, text=True, check=True, timeout=300
        )
        answer = json.loads(done.stdout)
        expected = predictor.predict([(path.name, path)], neighbours=1)[0]
        if predictor.precision == "fp32":
            assert answer["class"] == expected.predicted_class
            assert abs(answer["probability"] - expected.confidence) <= 1e-4
        # predict --bundle gives the example's answer.
        (mine,) = bundle.classify([(path.name, path)])
        assert mine.top[0][0] == answer["class"] and abs(mine.top[0][1] - answer["probability"]) <= 1e-6


def test_efficientnet_lite0_mlp_bundle(lite0_workspace, tmp_path):
    # The default exporter (dynamo, as the CLI and the pages use it).
    _check_bundle(lite0_workspace, _run_id(lite0_workspace, "efficientnet_lite0"), tmp_path / "bundle", tmp_path)


def test_efficientnet_lite0_logreg_bundle(lite0_workspace, tmp_path):
    from core.probing.suite import run_probe_suite

    run_probe_suite(
        dataset="synthetic", backbones=["efficientnet_lite0"], protocols=["logreg"], seeds=1, workspace=lite0_workspace
    )
    run_id = _run_id(lite0_workspace, "efficientnet_lite0", "logreg")
    _check_bundle(lite0_workspace, run_id, tmp_path / "bundle", tmp_path, exporter=FAST)
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["protocol"] == "logreg" and config["head"]["standardise"] is True


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["dinov2_vits14@random", "timm:vit_tiny_patch16_384.augreg_in21k_ft_in1k@random"])
def test_vit_bundles(spec, tiny_workspace, tmp_path):
    from core.probing.experiment import run_comparison
    from core.probing.heads import HeadConfig

    (record,) = run_comparison(
        dataset="synthetic", backbones=[spec], head=HeadConfig(epochs=2), workspace=tiny_workspace, precision="fp32"
    )
    _check_bundle(tiny_workspace, record["id"], tmp_path / "bundle", tmp_path, exporter=FAST)
    preprocessing = json.loads((tmp_path / "bundle" / "preprocessing.json").read_text())
    size = 384 if "384" in spec else 224
    assert preprocessing["input_size"] == [3, size, size]


def test_hostile_class_names_stay_data(lite0_workspace, tmp_path):
    run_id = _run_id(lite0_workspace, "efficientnet_lite0")
    run = RunRegistry(lite0_workspace.registry_path).get_run(run_id)
    names = [HOSTILE, *run["class_names"][1:]]
    with sqlite3.connect(lite0_workspace.registry_path) as db:
        db.execute("UPDATE runs SET class_names = ? WHERE id = ?", (json.dumps(names), run_id))
    out = tmp_path / "bundle"
    export_bundle(run_id, workspace=lite0_workspace, out=out, exporter=FAST)
    assert json.loads((out / "labels.json").read_text(encoding="utf-8"))[0] == HOSTILE
    card = (out / "README.md").read_text(encoding="utf-8")
    assert markdown_text(HOSTILE) in card
    assert "<script>" not in card and "[link](" not in card


def test_a_failed_parity_check_leaves_no_bundle(lite0_workspace, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_export, "PARITY_MAX_ABS", -1.0)  # no difference can pass: the gate must fail
    out = tmp_path / "exports" / "bundle"
    with pytest.raises(ParityError, match="differ by up to"):
        export_bundle(_run_id(lite0_workspace, "efficientnet_lite0"), workspace=lite0_workspace, out=out, exporter=FAST)
    assert not out.exists() and list((tmp_path / "exports").iterdir()) == []


def test_a_non_empty_folder_is_refused_without_force(lite0_workspace, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FlowerProbeError, match="--force"):
        export_bundle(_run_id(lite0_workspace, "efficientnet_lite0"), workspace=lite0_workspace, out=out)
    assert (out / "notes.txt").read_text() == "mine"


def test_knn_runs_are_refused_with_the_size(lite0_workspace, tmp_path):
    from core.probing.suite import run_probe_suite

    run_probe_suite(
        dataset="synthetic", backbones=["efficientnet_lite0"], protocols=["knn"], seeds=1, workspace=lite0_workspace
    )
    with pytest.raises(FlowerProbeError, match=r"knn run: its head is its training features \(\d+ x 1280"):
        export_bundle(
            _run_id(lite0_workspace, "efficientnet_lite0", "knn"), workspace=lite0_workspace, out=tmp_path / "bundle"
        )


def test_bundle_predict_gives_classify_reasons_for_bad_images(lite0_workspace, tmp_path):
    out = tmp_path / "bundle"
    export_bundle(_run_id(lite0_workspace, "efficientnet_lite0"), workspace=lite0_workspace, out=out, exporter=FAST)
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cmyk = tmp_path / "cmyk.jpg"
    from PIL import Image

    Image.new("CMYK", (64, 48), (0, 100, 200, 10)).save(cmyk)
    results = Bundle(out).classify([("broken.jpg", corrupt), ("cmyk.jpg", cmyk)])
    with pytest.raises(Exception) as refused:
        load_image(corrupt, name="broken.jpg")
    assert results[0].error == str(refused.value) and not results[0].top
    # CMYK is converted to RGB as Classify converts it, then classified.
    assert results[1].error is None and len(results[1].top) == 5
    assert 0 < sum(p for _, p in results[1].top) <= 1 + 1e-6


def test_an_attentive_run_exports_its_head_on_the_patch_tokens(tiny_synthetic_folder, tmp_path):
    from safetensors.torch import load_file

    from core.base.workspace import Workspace
    from core.bundle.export import PARITY_MAX_ABS
    from core.bundle.preprocess import crop_pixels
    from core.probing.attentive import load_attentive_head
    from core.runs.files import RunFiles
    from tests.helpers.attentive_runs import build_attentive_workspace

    root = tmp_path / "workspace"
    run_id = build_attentive_workspace(root, tiny_synthetic_folder)
    workspace = Workspace(root=root, data_root=root / "datasets")
    out = tmp_path / "bundle"
    _check_bundle(workspace, run_id, out, tmp_path)  # the default exporter, as the CLI and the pages use it
    # onnxruntime's probabilities are predict's (the head on the fp16-rounded patch tokens) on the test images.
    predictor = Predictor.from_run(run_id, workspace=workspace, device="cpu")
    paths = _test_images(predictor, 8)
    bundle = Bundle(out)
    pre = bundle.preprocessing
    pixels = np.stack([crop_pixels(load_image(path, draft_size=pre["resize"]), pre) for path in paths])
    predictions = predictor.predict([(path.name, path) for path in paths], neighbours=1)
    expected = np.stack([prediction.probabilities for prediction in predictions])
    assert np.abs(bundle.probabilities(pixels) - expected).max() <= PARITY_MAX_ABS
    # The PyTorch files rebuild the run's own head.
    config = json.loads((out / "config.json").read_text())
    assert config["protocol"] == "attentive" and config["features"] == "tokens"
    saved, trained = (
        load_attentive_head(load_file(str(path))).state_dict()
        for path in (out / "head.safetensors", RunFiles(predictor.run, workspace).head)
    )
    assert saved.keys() == trained.keys() and all((saved[k] == trained[k]).all() for k in saved)
    assert "the head reads the final feature map (49 x 1280" in (out / "README.md").read_text(encoding="utf-8")
