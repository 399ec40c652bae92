"""The bundle's preprocessing with Pillow and NumPy alone: a photo -> the uint8 (H, W, 3) crop ``model.onnx`` takes.

It repeats, step for step, what Flower Probe does before a backbone (``core.data.images.load_image`` then
``core.backbones.registry.make_transform``: torchvision's ``Resize`` on a PIL image is Pillow's ``resize`` with
the shorter side set to ``resize`` and the longer one ``int(resize * long / short)``; ``CenterCrop`` cuts at
``int(round((side - crop) / 2))``), so a bundle classifies a photo exactly as the Classify page does; the scaling
to [0, 1] and the normalisation are inside the graph. The card's example is this code written out; the export's
parity gate and ``predict --bundle`` use this function.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.base.errors import FlowerProbeError

_RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def preprocessing_record(config) -> dict:
    """``preprocessing.json``: timm's data-config terms plus the exact resize Flower Probe uses.

    ``config`` is the backbone's ``BackboneConfig``.
    """
    if config.interpolation not in _RESAMPLING:
        raise FlowerProbeError(
            f"interpolation must be one of {', '.join(_RESAMPLING)} for a bundle, got {config.interpolation!r}."
        )
    return {
        # timm's data config (timm.data.resolve_data_config): what timm users recognise.
        "input_size": [3, config.input_size, config.input_size],
        "interpolation": config.interpolation,
        "crop_pct": config.input_size / config.resize,
        "crop_mode": config.crop_mode,
        "mean": list(config.mean),
        "std": list(config.std),
        # Exact: the shorter side (or both sides for crop_mode "squash") before the centre crop, in pixels.
        "resize": config.resize,
        "channel_order": "RGB",
        "model_input": "uint8 NHWC (batch, height, width, 3), RGB 0-255; scaling and mean/std are in the graph",
        "jpeg_draft": "Pillow's Image.draft('RGB', (resize, resize)) before decoding a JPEG, as Flower Probe does",
    }


def crop_pixels(image: Image.Image, preprocessing: dict) -> np.ndarray:
    """An RGB image (decoded as ``load_image`` decodes it) -> uint8 array (input_size, input_size, 3)."""
    size, crop = preprocessing["resize"], preprocessing["input_size"][1]
    width, height = image.size
    if preprocessing["crop_mode"] == "squash":
        new_size = (size, size)
    elif width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    resized = image.resize(new_size, _RESAMPLING[preprocessing["interpolation"]])
    left, top = int(round((new_size[0] - crop) / 2.0)), int(round((new_size[1] - crop) / 2.0))
    return np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.uint8)
