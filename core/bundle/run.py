"""Run an exported bundle with onnxruntime: ``python -m core predict --bundle DIR IMAGE...``.

Reads what ``core.bundle.export`` wrote (``model.onnx``, ``preprocessing.json``, ``labels.json``), decodes each
image with ``core.data.images.load_image`` (the same one-line reasons as the Classify page for a corrupt file, a
CMYK or 16-bit PNG, a decompression bomb) and ``core.bundle.preprocess.crop_pixels``, and classifies them in
batches. Needs no run, no workspace and no PyTorch model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.base.errors import BadImageError, FlowerProbeError, MissingFileError
from core.bundle.preprocess import crop_pixels
from core.data.images import ImageSource, load_image
from core.onnx.export import OnnxUnavailableError, session

TOP_K = 5
_BATCH = 32  # images per onnxruntime call: the card's throughput figure is for this batch


@dataclass(frozen=True)
class BundlePrediction:
    """One image's answer; ``error`` set (and ``top`` empty) when it could not be read.

    top : (class name, probability) pairs, most probable first, at most ``TOP_K``
    """

    name: str
    top: tuple[tuple[str, float], ...] = ()
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "file": self.name,
            "top": [{"class": c, "probability": p} for c, p in self.top],
            "error": self.error,
        }


class Bundle:
    """An exported bundle folder, opened: its onnxruntime session, preprocessing and class names."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        missing = [n for n in ("model.onnx", "preprocessing.json", "labels.json") if not (self.folder / n).is_file()]
        if missing:
            raise MissingFileError(
                f"bundle must be a folder written by python -m core export; {self.folder} lacks {', '.join(missing)}."
            )
        try:
            self.preprocessing = json.loads((self.folder / "preprocessing.json").read_text(encoding="utf-8"))
            self.labels = json.loads((self.folder / "labels.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise FlowerProbeError(f"bundle {self.folder}: a JSON file is damaged ({exc}).") from exc
        try:
            self.session = session(self.folder / "model.onnx")
        except OnnxUnavailableError as exc:
            raise FlowerProbeError(f"bundle {self.folder}: {exc}") from exc

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 crops (N, S, S, 3) -> probabilities (N, classes)."""
        return self.session.run(["probabilities"], {"images": np.ascontiguousarray(pixels, dtype=np.uint8)})[0]

    def classify(self, images: Sequence[tuple[str, ImageSource]]) -> list[BundlePrediction]:
        """Each (name, source) -> a ``BundlePrediction``; an unreadable image gets its reason, the rest go on."""
        results: list[BundlePrediction | None] = [None] * len(images)
        ready: list[tuple[int, np.ndarray]] = []
        for position, (name, source) in enumerate(images):
            try:
                image = load_image(source, draft_size=int(self.preprocessing["resize"]), name=name)
            except BadImageError as exc:
                results[position] = BundlePrediction(name=name, error=str(exc))
                continue
            ready.append((position, crop_pixels(image, self.preprocessing)))
        for start in range(0, len(ready), _BATCH):
            chunk = ready[start : start + _BATCH]
            probabilities = self.probabilities(np.stack([pixels for _, pixels in chunk]))
            for (position, _), row in zip(chunk, probabilities, strict=True):
                order = np.argsort(-row, kind="stable")[:TOP_K]
                results[position] = BundlePrediction(
                    name=images[position][0], top=tuple((str(self.labels[c]), float(row[c])) for c in order)
                )
        return results
