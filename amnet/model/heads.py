"""Classification and regression heads, shared across pyramid levels."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from amnet.model.blocks import ConvNormAct, MaskedConv1d, Scale


class ClassificationHead(nn.Module):
    """``num_layers - 1`` × [Conv + LayerNorm + ReLU] then Conv(D→K); bias set for the prior."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        num_classes: int,
        num_layers: int = 3,
        kernel_size: int = 3,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        dims = [dim] + [head_dim] * (num_layers - 1)
        self.trunk = nn.ModuleList(
            ConvNormAct(a, b, kernel_size) for a, b in itertools.pairwise(dims)
        )
        self.out = MaskedConv1d(dims[-1], num_classes, kernel_size)
        # Start every class at probability prior_prob so the focal loss is stable early on.
        nn.init.constant_(self.out.conv.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.trunk:
            x = layer(x, mask)
        return self.out(x, mask)


class RegressionHead(nn.Module):
    """Same trunk, then Conv(D→2) → ReLU × a learnable per-level scale: distances to start/end."""

    def __init__(
        self, dim: int, head_dim: int, num_levels: int, num_layers: int = 3, kernel_size: int = 3
    ) -> None:
        super().__init__()
        dims = [dim] + [head_dim] * (num_layers - 1)
        self.trunk = nn.ModuleList(
            ConvNormAct(a, b, kernel_size) for a, b in itertools.pairwise(dims)
        )
        self.out = MaskedConv1d(dims[-1], 2, kernel_size)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, level: int) -> torch.Tensor:
        for layer in self.trunk:
            x = layer(x, mask)
        return torch.relu(self.scales[level](self.out(x, mask)))
