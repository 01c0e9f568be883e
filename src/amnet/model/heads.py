"""Classification and regression heads, shared across pyramid levels."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from amnet.model.blocks import ConvNormAct, MaskedConv1d, Scale
from amnet.model.config import OFFSET_ACTIVATIONS


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
        bias = self.out.conv.bias
        assert bias is not None  # MaskedConv1d always has one
        nn.init.constant_(bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.trunk:
            x = layer(x, mask)
        return self.out(x, mask)


# softplus(b) = 1 at b = 0.541: every offset starts at one stride, with slope sigmoid(b) = 0.63.
_SOFTPLUS_ONE = math.log(math.e - 1.0)


class RegressionHead(nn.Module):
    """Same trunk, then Conv(D→2) × a learnable per-level scale → softplus: distances to the
    start and end, in units of the point's stride.

    Why softplus and not ReLU: the trunk ends in ReLU, so its output is non-negative with a large
    shared component; a randomly initialised output conv then gives one offset a pre-activation
    of the same sign at nearly every point. Under ReLU a negative sign means that offset is 0 and
    never receives a gradient (measured: a dead offset for 35 of 96 config × seed pairs).
    Softplus is positive with a positive slope everywhere, and the output layer starts with small
    weights and the bias ``softplus⁻¹(1)``, so every offset starts at one stride with slope 0.63
    whatever the trunk does. ``activation="relu"`` keeps the older head for checkpoints and
    ablations.
    """

    def __init__(
        self,
        dim: int,
        head_dim: int,
        num_levels: int,
        num_layers: int = 3,
        kernel_size: int = 3,
        activation: str = "softplus",
    ) -> None:
        super().__init__()
        if activation not in OFFSET_ACTIVATIONS:
            raise ValueError(
                f"offset activation must be one of {OFFSET_ACTIVATIONS}, got {activation!r}"
            )
        self.activation = activation
        dims = [dim] + [head_dim] * (num_layers - 1)
        self.trunk = nn.ModuleList(
            ConvNormAct(a, b, kernel_size) for a, b in itertools.pairwise(dims)
        )
        self.out = MaskedConv1d(dims[-1], 2, kernel_size)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        if activation == "softplus":
            nn.init.normal_(self.out.conv.weight, std=0.01)
            bias = self.out.conv.bias
            assert bias is not None  # MaskedConv1d always has one
            nn.init.constant_(bias, _SOFTPLUS_ONE)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, level: int) -> torch.Tensor:
        for layer in self.trunk:
            x = layer(x, mask)
        z = self.scales[level](self.out(x, mask))
        if self.activation == "relu":
            return torch.relu(z)
        # softplus(0) at padded points is not 0; the mask keeps them exactly 0 as before.
        return F.softplus(z) * mask
