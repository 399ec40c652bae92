"""The bundle's Pillow-only preprocessing gives exactly Flower Probe's pixels (before the graph's normalisation)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from core.backbones.registry import get_config, make_transform
from core.bundle.preprocess import crop_pixels, preprocessing_record


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (257, 257), (640, 481)])
@pytest.mark.parametrize("crop_mode", ["center", "squash"])
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet50"])
def test_crop_pixels_then_normalise_equals_the_engine_transform(size, crop_mode, backbone):
    config = dataclasses.replace(get_config(backbone), crop_mode=crop_mode)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    pixels = crop_pixels(image, preprocessing_record(config))
    assert pixels.shape == (config.input_size, config.input_size, 3) and pixels.dtype == np.uint8
    # What the graph does first: x / 255, then (x - mean) / std, channels first.
    ours = (pixels.transpose(2, 0, 1).astype(np.float32) / 255.0 - np.float32(config.mean)[:, None, None]) / np.float32(
        config.std
    )[:, None, None]
    theirs = make_transform(config)(image).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_preprocessing_record_speaks_timm():
    record = preprocessing_record(get_config("efficientnet_lite0"))
    assert record["input_size"] == [3, 224, 224] and record["interpolation"] == "bicubic"
    assert record["crop_pct"] == pytest.approx(0.875) and len(record["mean"]) == len(record["std"]) == 3
