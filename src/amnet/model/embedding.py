"""Projection of the input features (e.g. 2048-d I3D) to the model width."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from amnet.model.blocks import ConvNormAct


class FeatureEmbedding(nn.Module):
    """Two masked Conv1d + LayerNorm + ReLU layers, ``C → D → D``."""

    def __init__(self, in_dim: int, dim: int, kernel_size: int = 3, num_layers: int = 2) -> None:
        super().__init__()
        dims = [in_dim] + [dim] * num_layers
        self.layers = nn.ModuleList(
            ConvNormAct(a, b, kernel_size) for a, b in itertools.pairwise(dims)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x
