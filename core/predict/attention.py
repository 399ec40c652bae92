"""Where an attentive probe looks: its head's attention over a photo's patches, as a heat map over the photo.

An ``attentive`` run (``core.probing.attentive``) saves its head; for any photo, the backbone's patch tokens
(``core.maps.patches.patch_grids``: a ViT's final-norm patch tokens, a CNN's last feature map, the very tokens
the token cache holds) go through the head's attention, averaged over its queries and heads, one weight per
patch summing to 1 over the photo. ``attention_views`` returns the weights on their grid, the head's prediction
and an overlay (colorcet's ``bgy`` map, scaled to the photo's own largest weight) on the model's input crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from core.base.errors import FlowerProbeError, MissingFileError
from core.base.progress import ProgressCallback
from core.base.workspace import Workspace
from core.data.images import ImageSource
from core.maps.patches import patch_grids
from core.probing.attentive import load_attentive_head
from core.runs.files import RunFiles

OVERLAY_ALPHA = 0.6  # the heat map's share of each pixel over the photo


@dataclass(frozen=True)
class AttentionView:
    """One photo under an attentive head: ``weights`` (rows, cols) summing to 1, the crop and the overlay."""

    name: str
    weights: np.ndarray
    crop: Image.Image
    overlay: Image.Image
    predicted: str
    confidence: float  # percent

    @property
    def peak_share(self) -> float:
        """The largest patch weight relative to uniform attention (1.0: the head looks everywhere equally)."""
        return float(self.weights.max() * self.weights.size)


def attentive_runs(runs: list[dict]) -> list[dict]:
    """The completed attentive runs with a saved head (the whole training part)."""
    return [r for r in runs if r.get("protocol") == "attentive" and r.get("head_path")]


def _heat(values: np.ndarray) -> np.ndarray:
    """(rows, cols) in [0, 1] -> (rows, cols, 3) uint8 on colorcet's perceptually uniform ``bgy`` map."""
    import colorcet
    from PIL import ImageColor

    stops = np.array([ImageColor.getrgb(colour) for colour in colorcet.palette["bgy"]], dtype=np.float64)
    positions = np.linspace(0, 1, len(stops))
    return np.stack([np.interp(values, positions, stops[:, c]) for c in range(3)], axis=-1).round().astype(np.uint8)


def overlay(crop: Image.Image, weights: np.ndarray) -> Image.Image:
    """The heat map of ``weights`` (rows, cols) upsampled smoothly onto ``crop`` (RGB), blended."""
    scaled = weights / max(float(weights.max()), 1e-12)
    heat = Image.fromarray(_heat(scaled)).resize(crop.size, Image.Resampling.BILINEAR)
    return Image.blend(crop.convert("RGB"), heat, OVERLAY_ALPHA)


def attention_views(
    run: dict,
    images: list[tuple[str, ImageSource]],
    *,
    workspace: Workspace,
    progress: ProgressCallback | None = None,
) -> list[AttentionView]:
    """The attention of ``run``'s attentive head over each image; FlowerProbeError for another kind of run."""
    if run.get("protocol") != "attentive":
        raise FlowerProbeError(
            f"run must be an attentive run (protocol 'attentive'), got run {run.get('id')} ({run.get('protocol')})."
        )
    path = RunFiles(run, workspace).head
    if path is None or not path.is_file():
        raise MissingFileError(f"The head of run {run['id']} ({path}) is missing; run the attentive probe again.")
    state = load_file(str(path))
    head = load_attentive_head(state)
    grids = patch_grids(
        images, backbone=run["backbone"], weights=run["weights"], workspace=workspace, progress=progress
    )
    views = []
    for grid in grids:
        rows, cols, dim = grid.tokens.shape
        if dim != head.dim:
            raise FlowerProbeError(f"run {run['id']}'s head reads {head.dim}-d tokens; {run['backbone']} gave {dim}-d.")
        tokens = torch.as_tensor(grid.tokens.reshape(1, rows * cols, dim))
        with torch.no_grad():
            weights = head.attention(tokens).mean(dim=(1, 2))[0].numpy().reshape(rows, cols)
            probabilities = head(tokens).softmax(dim=-1)[0].numpy()
        best = int(probabilities.argmax())
        views.append(
            AttentionView(
                name=grid.name,
                weights=weights,
                crop=grid.crop,
                overlay=overlay(grid.crop, weights),
                predicted=run["class_names"][best],
                confidence=float(probabilities[best] * 100),
            )
        )
    return views
