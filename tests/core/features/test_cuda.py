"""The CUDA path (device choice, autocast fp16/bf16, pinned memory, decode workers): skipped without an NVIDIA GPU.

``bench/gpu_check.sh`` runs these on a GPU machine (``pytest -m cuda``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.features.extract import default_num_workers, extract_features, feature_loader, select_device, select_precision
from tests.core.features.test_features import _mini_dataset

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_auto_picks_the_gpu_with_mixed_precision():
    device = select_device("auto")
    assert device.type == "cuda"
    assert select_precision(device, "auto") == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert default_num_workers(device) >= 1  # a GPU is fed by decode workers


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_features_stay_close_to_fp32(workspace, tiny_synthetic_folder, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    runs = {
        p: extract_features(
            dataset,
            "dinov2_vits14",
            workspace=workspace,
            weights="random",
            device="cuda",
            precision=p,
            variant="cls+patch_mean",
        )
        for p in ("fp32", precision)
    }
    assert runs[precision].precision == precision and "cpu" not in runs[precision].device.lower()
    assert _cosines(runs["fp32"].features, runs[precision].features).min() > 0.99


def test_batches_for_the_gpu_come_in_pinned_memory(workspace, tiny_synthetic_folder):
    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    loader = feature_loader(
        dataset.image_paths, "efficientnet_lite0", device=torch.device("cuda"), batch_size=4, num_workers=2
    )
    images, rows, errors = next(iter(loader))
    assert images.is_pinned() and len(rows) == 4 and not any(errors)


def test_decode_workers_give_the_same_features_as_decoding_in_process(workspace, tiny_synthetic_folder, tmp_path):
    from core.base.workspace import Workspace

    dataset = _mini_dataset(workspace, tiny_synthetic_folder, per_class=3)
    other_root = tmp_path / "other"
    other = Workspace(root=other_root, data_root=workspace.data_root)  # same photos, separate cache
    with_workers = extract_features(
        dataset,
        "efficientnet_lite0",
        workspace=workspace,
        weights="random",
        device="cuda",
        precision="fp32",
        num_workers=2,
    )
    in_process = extract_features(
        dataset, "efficientnet_lite0", workspace=other, weights="random", device="cuda", precision="fp32", num_workers=0
    )
    np.testing.assert_array_equal(with_workers.rows, in_process.rows)
    np.testing.assert_allclose(with_workers.features, in_process.features, rtol=1e-4, atol=1e-5)
