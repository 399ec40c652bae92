"""The ONNX exporter and the backbone graph cache: unexportable operators named, damaged files rebuilt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.base.fileio import file_digest
from core.onnx.backbone import backbone_graph, graph_features
from core.onnx.export import OnnxUnavailableError, compare_outputs, export_module
from tests.helpers.tiny_models import TinyCnn, UnexportableCnn


def test_an_unexportable_operator_is_named_and_leaves_no_file(tmp_path):
    target = tmp_path / "cummax.onnx"
    with pytest.raises(OnnxUnavailableError, match="operator cummax"):
        export_module(UnexportableCnn(), torch.randn(2, 3, 8, 8), target, input_name="x", output_names=["y"])
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_batch_of_one(tmp_path):
    with pytest.raises(Exception, match="batch of at least 2"):
        export_module(TinyCnn(), torch.randn(1, 3, 8, 8), tmp_path / "x.onnx", input_name="x", output_names=["y"])


def test_compare_outputs_flags_a_difference_beyond_tolerance():
    a = np.ones((2, 3), np.float32)
    assert compare_outputs({"f": a}, {"f": a + 5e-5})["f"]["ok"] == 1.0
    assert compare_outputs({"f": a}, {"f": a + 5e-4})["f"]["ok"] == 0.0


def test_a_damaged_cached_graph_is_rebuilt_not_trusted(workspace):
    graph = backbone_graph("resnet50@random", workspace=workspace, model=TinyCnn, exporter="torchscript")
    assert graph.rebuilt is None and graph.check["gap"]["ok"]
    again = backbone_graph("resnet50@random", workspace=workspace, model=TinyCnn, exporter="torchscript")
    assert again.path == graph.path and again.rebuilt is None  # reused as it is
    data = bytearray(graph.path.read_bytes())
    data[-20:] = b"\x00" * 20  # the tail of the weights: still a loadable protobuf, wrong numbers
    graph.path.write_bytes(bytes(data))
    rebuilt = backbone_graph("resnet50@random", workspace=workspace, model=TinyCnn, exporter="torchscript")
    assert "SHA-256" in rebuilt.rebuilt
    record = json.loads(graph.path.with_suffix(".json").read_text())
    assert record["sha256"] == file_digest(rebuilt.path)
    images = torch.randn(5, 3, 224, 224)
    with torch.inference_mode():
        expected = TinyCnn().eval()(images).numpy()
    got = graph_features(rebuilt.session(), images.numpy(), ("gap",))["gap"]
    np.testing.assert_allclose(got, expected, atol=1e-5)
