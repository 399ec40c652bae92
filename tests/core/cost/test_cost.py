"""The cost of a backbone: FLOPs against a hand count, the Pareto front, measuring and reusing stored figures."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from core.base.errors import FlowerProbeError
from core.cost import measure
from core.cost.measure import COSTS_FILENAME, busy_note, cost_for_run, count_flops, count_parameters, measure_costs
from core.cost.pareto import pareto_front
from core.features.rates import record_rate


def test_flops_of_a_tiny_network_match_a_hand_count():
    # Conv 3->8, 3x3, no padding, on 8x8: a 6x6 output, each value 3*3*3 multiply-adds (2 FLOPs each);
    # then Linear 8*6*6=288 -> 10: 288 multiply-adds per output. Biases and ReLU are not counted (nor by torch).
    network = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10))
    by_hand = 2 * (8 * 6 * 6) * (3 * 3 * 3) + 2 * 288 * 10
    flops, output = count_flops(network, torch.randn(4, 3, 8, 8))
    assert flops == by_hand  # per image: the batch of 4 is divided out
    assert output.shape == (4, 10)
    assert count_parameters(network) == 8 * 3 * 3 * 3 + 8 + 288 * 10 + 10


def test_pareto_front_on_a_hand_made_set():
    #            cost  accuracy
    points = [
        (10.0, 80.0),  # 0: front (cheapest)
        (20.0, 85.0),  # 1: front
        (25.0, 84.0),  # 2: beaten by 1 (cheaper and better)
        (40.0, 90.0),  # 3: front
        (40.0, 88.0),  # 4: beaten by 3 (same cost, better)
        (60.0, 90.0),  # 5: beaten by 3 (cheaper, same accuracy)
        (80.0, 95.0),  # 6: front (most accurate)
        (float("nan"), 99.0),  # 7: no cost measured: left out
    ]
    costs, accuracies = zip(*points)
    assert pareto_front(costs, accuracies) == [0, 1, 3, 6]
    # images per second: higher is better, so the order of "cheap" flips
    speeds = [1000 / c for c in costs]
    assert pareto_front(speeds, accuracies, lower_cost_is_better=False) == [0, 1, 3, 6]
    assert pareto_front([5.0, 5.0], [70.0, 70.0]) == [0, 1]  # equal points are both kept
    with pytest.raises(FlowerProbeError, match="same length"):
        pareto_front([1.0, 2.0], [3.0])


def test_busy_note_names_the_load():
    assert busy_note([0.4, 0.3, 0.2], 2) is None
    assert "load average 7.0 on 2 cores" in busy_note([7.0, 3.0, 1.0], 2)


class _Tiny(nn.Module):
    """A stand-in backbone: features of size 6 from a 224 px image, cheap to run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 7, stride=7)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


def test_measure_stores_reuses_and_a_missing_backbone_does_not_stop_the_others(workspace, monkeypatch):
    built = []

    def fake_build(name, *, weights, workspace):
        built.append(name)
        return _Tiny().eval(), None

    monkeypatch.setattr(measure, "build_backbone", fake_build)
    specs = [("resnet50", "random"), ("no_such_backbone", "pretrained"), ("efficientnet_lite0", "random")]
    results = measure_costs(specs, workspace=workspace, device="cpu", precision="fp32", batch_size=4)
    assert [r[4] is None for r in results] == [True, False, True]
    assert "no_such_backbone" in results[1][4]  # the registry's own message, as compare gives it
    cost = results[0][2]
    assert cost.flops_per_image == 2 * 6 * (32 * 32) * (3 * 7 * 7)  # the conv; pooling adds no matmul FLOPs
    assert cost.feature_dim == 6 and cost.parameters == 6 * 3 * 7 * 7 + 6
    assert cost.weights_file_bytes is None and cost.weights_tag == "random"
    assert cost.latency_ms_p95 >= cost.latency_ms_median > 0
    assert cost.images_per_s_model > 0 and cost.end_to_end_source == "decode+forward"
    assert cost.load_before and cost.cpu_flags is not None
    stored = json.loads((workspace.root / COSTS_FILENAME).read_text())
    assert set(stored) == {results[0][2].key, results[2][2].key}

    # Measured once: asked again, the stored figure comes back without building anything.
    built.clear()
    again = measure_costs([("resnet50", "random")], workspace=workspace, device="cpu", precision="fp32", batch_size=4)
    assert again[0][3] is True and built == [] and again[0][2] == cost

    # The extraction's own measured rate is reused for end to end.
    record_rate(workspace, what="resnet50", device=cost.device, images_per_s=12.5)
    remeasured = measure_costs(
        [("resnet50", "random")], workspace=workspace, device="cpu", precision="fp32", batch_size=4, remeasure=True
    )[0][2]
    assert remeasured.end_to_end_source == "extraction" and remeasured.images_per_s_end_to_end == 12.5

    run = {"backbone": "resnet50", "weights_tag": "random", "precision": "fp32", "device": cost.device}
    assert cost_for_run(stored, run)["backbone"] == "resnet50"
    assert cost_for_run(stored, {**run, "precision": "bf16"}) is None


def test_bad_batch_size_names_the_parameter(workspace):
    with pytest.raises(FlowerProbeError, match="batch_size"):
        measure.measure_cost("resnet50", weights="random", workspace=workspace, batch_size=0)
