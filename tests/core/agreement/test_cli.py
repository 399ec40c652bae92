"""``python -m core agree`` on the populated workspace (cached features and a run of each backbone): the printed
measures, the JSON, and the messages for the same backbone twice and a k too large."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.__main__ import main
from core.agreement.measures import feature_agreement
from core.agreement.pairs import load_feature_pair


def test_agree_prints_each_measure_and_writes_json(populated_copy, tmp_path, capsys):
    out = tmp_path / "agree.json"
    code = main(
        ["agree", "--dataset", "synthetic", "--backbones", "efficientnet_lite0", "resnet50@random", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "A = efficientnet_lite0 · pretrained · gap features, B = resnet50 · random weights · gap features" in printed
    assert "136 images" in printed
    for phrase in ("Their neighbourhoods agree on", "CKA ", "kappa", "McNemar"):
        assert phrase in printed
    report = json.loads(out.read_text())
    pair = load_feature_pair(
        "synthetic", "efficientnet_lite0", "resnet50@random", workspace=populated_copy
    )  # the same features, measured independently of the command
    expected = feature_agreement(pair.features_a, pair.features_b, k=10, n_resamples=0)
    assert report["features"]["mutual_knn"] == pytest.approx(expected.mutual_knn)
    assert report["features"]["cka"] == pytest.approx(expected.cka)
    errors = report["error_consistency"]
    assert errors["n_images"] > 0 and -1 <= errors["kappa"] <= 1
    c_exp = errors["accuracy_a"] * errors["accuracy_b"] + (1 - errors["accuracy_a"]) * (1 - errors["accuracy_b"])
    assert errors["kappa"] == pytest.approx((errors["observed"] - c_exp) / (1 - c_exp))
    assert np.isclose(errors["observed"], (errors["both_right"] + errors["both_wrong"]) / errors["n_images"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--backbones", "efficientnet_lite0", "efficientnet_lite0"], "backbones must name two different feature sets"),
        (["--backbones", "efficientnet_lite0", "resnet50@random", "--k", "136"], "k must be an integer from 1 to 135"),
        (["--backbones", "efficientnet_lite0", "dinov2_vits14@random", "--no-extract"], "No cached dinov2_vits14"),
    ],
)
def test_agree_bad_input_is_one_line_naming_the_parameter(populated_copy, capsys, arguments, message):
    assert main(["agree", "--dataset", "synthetic", *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error
