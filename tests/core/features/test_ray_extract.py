"""The Ray engine on a local Ray cluster started in the test: same features as the local engine, same cache."""

from __future__ import annotations

import numpy as np
import pytest

from core.__main__ import main
from core.features.extract import extract_features
from tests.core.features.test_features import _counting_images, _mini_copy, _mini_dataset


@pytest.mark.slow
def test_ray_engine_matches_the_local_engine_and_compare_reads_it_with_zero_forwards(
    workspace,
    tiny_synthetic_folder,
    tmp_path,
    monkeypatch,
    capsys,
):
    ray = pytest.importorskip("ray")
    from core.features.ray_engine import extract_features_ray

    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=4, classes=3)  # 12 images, shards of 8 and 4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = extract_features_ray(
            dataset,
            "efficientnet_lite0",
            workspace=workspace,
            weights="random",
            precision="fp32",
            batch_size=4,
            shard_size=8,
        )
    finally:
        ray.shutdown()

    local_workspace, local_dataset = _mini_copy(workspace, tmp_path / "local")
    local = extract_features(
        local_dataset,
        "efficientnet_lite0",
        workspace=local_workspace,
        weights="random",
        precision="fp32",
        num_workers=0,
    )
    np.testing.assert_array_equal(on_ray.rows, local.rows)
    assert np.abs(on_ray.features - local.features).max() <= 1e-5
    assert on_ray.device.startswith("Ray (1 model actor on cpu")

    seen = _counting_images(monkeypatch)
    assert (
        main(
            [
                "compare",
                "--dataset",
                "folder:mini",
                "--backbones",
                "efficientnet_lite0",
                "--random-weights-for",
                "efficientnet_lite0",
                "--epochs",
                "1",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert seen[0] == 0  # the Ray engine's cache served compare
    assert "test acc" in capsys.readouterr().out


def test_ray_missing_says_how_to_install(monkeypatch, workspace):
    import builtins

    from core.features import ray_engine as ray_extract

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ray_extract.RayMissingError, match=r"pip install \"ray\[data\]"):
        ray_extract._ray()
