"""onnxruntime as the CPU feature engine: same features as PyTorch fp32, the measured choice kept, the fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.backbones.resolved import ResolvedBackbone, resolve_backbone
from core.backbones.variants import variant_forward
from core.data.datasets import load_synthetic
from core.features import extract
from core.features.extract import FeatureSet, _DatasetImages, extract_features
from core.features.runtime import RATES_FILENAME, RUNTIME_KEY_PREFIX
from core.onnx.backbone import backbone_graph, graph_features
from tests.helpers.tiny_models import UnexportableCnn

# Real images, few of them: the equality is checked per image, and exports are the slow part.
N_IMAGES = 6


def _real_images(workspace, backbone: ResolvedBackbone) -> torch.Tensor:
    dataset = load_synthetic(workspace)
    images = _DatasetImages(dataset.image_paths, backbone)
    rows = np.linspace(0, len(dataset.image_paths) - 1, N_IMAGES).astype(int)  # several classes
    return torch.stack([images[int(row)][0] for row in rows])


@pytest.mark.parametrize(
    "spec",
    [
        "efficientnet_lite0",
        pytest.param("resnet50@random", marks=pytest.mark.slow),
        pytest.param("dinov2_vits14@random", marks=pytest.mark.slow),
        pytest.param("timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k@random", marks=pytest.mark.slow),
        pytest.param("timm:mobilenetv3_small_050.lamb_in1k@random", marks=pytest.mark.slow),
    ],
)
def test_onnxruntime_features_equal_torch_fp32_on_real_images(spec, tiny_workspace):
    backbone = resolve_backbone(spec).located(workspace=tiny_workspace)
    graph = backbone_graph(backbone, workspace=tiny_workspace)
    assert graph.variants == backbone.variants  # every variant is an output
    images = _real_images(tiny_workspace, backbone)
    model = backbone.build(workspace=tiny_workspace)
    with variant_forward(model, backbone.variants) as forward, torch.inference_mode():
        expected = {name: value.float().numpy() for name, value in forward(images).items()}
    got = graph_features(graph.session(), images.numpy(), graph.variants)
    for name in backbone.variants:
        a, b = expected[name].astype(np.float64), got[name].astype(np.float64)
        assert a.shape == b.shape == (N_IMAGES, a.shape[1])
        assert np.abs(a - b).max() <= 1e-4, name
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() >= 0.99999, name


def test_the_auto_choice_is_measured_once_and_recorded(tiny_workspace, monkeypatch):
    dataset = load_synthetic(tiny_workspace)
    timings = []

    def measured(torch_forward, session, graph, **kwargs):
        timings.append(graph.backbone)
        return 10.0, 40.0  # images/s: PyTorch, onnxruntime

    monkeypatch.setattr(extract, "measure_runtimes", measured)
    features = extract_features(dataset, "efficientnet_lite0", workspace=tiny_workspace, runtime="auto")
    assert features.runtime == "onnxruntime" and features.precision == "fp32"
    rates = json.loads((tiny_workspace.root / RATES_FILENAME).read_text())
    (record,) = rates[RUNTIME_KEY_PREFIX + "efficientnet_lite0"].values()
    assert record["runtime"] == "onnxruntime"
    assert (record["torch_images_per_s"], record["onnxruntime_images_per_s"]) == (10.0, 40.0)
    assert isinstance(record["cpu_flags"], list)
    # The next extraction (features gone) recalls the choice instead of timing again.
    for entry in tiny_workspace.features_dir.iterdir():
        if entry.is_dir():
            for file in entry.iterdir():
                file.unlink()
    again = extract_features(dataset, "efficientnet_lite0", workspace=tiny_workspace, runtime="auto")
    assert timings == ["efficientnet_lite0"] and again.runtime == "onnxruntime"
    torch_features = extract_features(
        dataset, "efficientnet_lite0", workspace=tiny_workspace, runtime="torch", precision="fp32"
    )
    # The fp32 cache is shared by both runtimes: torch reads onnxruntime's.
    assert torch_features.from_cache and torch_features.runtime == "onnxruntime"
    # Other weights of the same architecture (the offline demo's random Lite0) reuse the measurement: the speed is
    # the architecture's; their own graph is exported and checked, their own features extracted.
    random = extract_features(dataset, "efficientnet_lite0@random", workspace=tiny_workspace, runtime="auto")
    assert timings == ["efficientnet_lite0"] and random.runtime == "onnxruntime"
    assert not random.from_cache and not np.allclose(random.features, again.features)


def _extract_saying_runtime(workspace, spec: str, runtime: str) -> tuple[FeatureSet, list[str]]:
    """``extract_features`` on the synthetic set, and the lines it said about the runtime."""
    lines = []
    features = extract_features(
        load_synthetic(workspace),
        spec,
        workspace=workspace,
        runtime=runtime,
        progress=lambda event: lines.append(event.message) if event.stage == "runtime" else None,
    )
    return features, lines


def test_an_unexportable_backbone_falls_back_to_torch_with_the_operator_named(tiny_workspace, monkeypatch):
    monkeypatch.setattr(ResolvedBackbone, "build", lambda self, **kwargs: UnexportableCnn().eval())
    features, lines = _extract_saying_runtime(tiny_workspace, "resnet50@random", "onnxruntime")
    assert features.runtime == "torch" and features.features.shape[1] == 8
    (line,) = lines
    assert "cummax" in line and "PyTorch" in line and "\n" not in line
    assert not list((tiny_workspace.root / "onnx").glob("*.onnx"))  # nothing half-written kept


def test_an_old_onnxruntime_falls_back_to_torch(tiny_workspace, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.10.0")
    features, lines = _extract_saying_runtime(tiny_workspace, "efficientnet_lite0", "auto")
    assert features.runtime == "torch"
    assert len(lines) == 1 and "too old" in lines[0]
