"""Tiny stand-ins for backbones: exported to ONNX in a fraction of a second, one with an unexportable operator."""

from __future__ import annotations

import torch
from torch import nn


class TinyCnn(nn.Module):
    """Stands in for a backbone: images (N, 3, S, S) -> pooled features (N, 8), the same weights every time."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu().mean(dim=(2, 3))


class UnexportableCnn(TinyCnn):
    """``TinyCnn`` followed by a running maximum: aten::cummax, which no ONNX exporter handles."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(super().forward(x), dim=1).values
