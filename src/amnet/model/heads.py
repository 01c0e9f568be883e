"""Classification and regression heads, shared across pyramid levels.

A head runs every level in one pass: the levels are joined along time with ``kernel_size // 2``
zero rows after each, which a same-padded convolution reads exactly as it reads its own zero
padding, so no level sees another's rows and each point gets the numbers a per-level pass gives.
One convolution per layer instead of one per layer and level: the heads' forward + backward is
1.4-1.6× faster on CPU training crops (docs/BENCHMARKS.md, "Pyramid heads")."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from amnet.model.blocks import ConvNormAct, MaskedConv1d, Scale
from amnet.model.config import OFFSET_ACTIVATIONS


@dataclass
class JoinedLevels:
    """The pyramid's levels joined for the heads, built once per forward for both of them."""

    x: torch.Tensor  # [B, Σ (T_l + gap), D], ``gap`` zero rows after each level
    mask: torch.Tensor  # [B, Σ (T_l + gap), 1]
    rows: torch.Tensor  # [Σ T_l]: each point's row in ``x``, levels in order
    sizes: list[int]  # T_l
    point_mask: torch.Tensor  # [B, Σ T_l, 1]: the levels' masks, points in order (no gaps)


def level_rows(sizes: Sequence[int], gap: int, device: torch.device) -> torch.Tensor:
    """Each point's row in the joined sequence, levels in order ``[Σ T_l]``. (One gather, not a
    slice per level: ONNX shape inference keeps the static dims through it.)"""
    rows, start = [], 0
    for size in sizes:
        rows.append(torch.arange(size, device=device) + start)
        start = start + size + gap
    return torch.cat(rows)


def join_levels(
    levels: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], gap: int
) -> JoinedLevels:
    """``[B, T_l, C]`` features and ``[B, T_l, 1]`` masks per level, joined along time."""

    def join(parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.pad(t, (0, 0, 0, gap)) for t in parts], dim=1)

    sizes = [t.shape[1] for t in levels]
    rows = level_rows(sizes, gap, levels[0].device)
    return JoinedLevels(join(levels), join(masks), rows, sizes, torch.cat(list(masks), dim=1))


class PyramidHead(nn.Module):
    """``num_layers - 1`` × [Conv + LayerNorm + ReLU] then Conv(→ ``out_dim``), run over all
    levels at once (joined with :attr:`gap` rows between them)."""

    def __init__(
        self, dim: int, head_dim: int, out_dim: int, num_layers: int, kernel_size: int
    ) -> None:
        super().__init__()
        dims = [dim] + [head_dim] * (num_layers - 1)
        self.trunk = nn.ModuleList(
            ConvNormAct(a, b, kernel_size) for a, b in itertools.pairwise(dims)
        )
        self.out = MaskedConv1d(dims[-1], out_dim, kernel_size)
        self.gap = kernel_size // 2

    def run_levels(self, joined: JoinedLevels) -> torch.Tensor:
        """The output at every point of every level ``[B, Σ T_l, out_dim]``, levels in order."""
        x = joined.x
        for layer in self.trunk:
            x = layer(x, joined.mask)
        return self.out(x, joined.mask).index_select(1, joined.rows)


class ClassificationHead(PyramidHead):
    """Class logits ``[B, P, K]`` over the points of every level; bias set for the prior."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        num_classes: int,
        num_layers: int = 3,
        kernel_size: int = 3,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__(dim, head_dim, num_classes, num_layers, kernel_size)
        # Start every class at probability prior_prob so the focal loss is stable early on.
        bias = self.out.conv.bias
        assert bias is not None  # MaskedConv1d always has one
        nn.init.constant_(bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, joined: JoinedLevels) -> torch.Tensor:
        return self.run_levels(joined)


# softplus(b) = 1 at b = 0.541: every offset starts at one stride, with slope sigmoid(b) = 0.63.
_SOFTPLUS_ONE = math.log(math.e - 1.0)


class RegressionHead(PyramidHead):
    """Same trunk, then Conv(D→2) × a learnable per-level scale → softplus: distances to the
    start and end ``[B, P, 2]``, in units of the point's stride.

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
        if activation not in OFFSET_ACTIVATIONS:
            raise ValueError(
                f"offset activation must be one of {OFFSET_ACTIVATIONS}, got {activation!r}"
            )
        super().__init__(dim, head_dim, 2, num_layers, kernel_size)
        self.activation = activation
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        if activation == "softplus":
            nn.init.normal_(self.out.conv.weight, std=0.01)
            bias = self.out.conv.bias
            assert bias is not None  # MaskedConv1d always has one
            nn.init.constant_(bias, _SOFTPLUS_ONE)

    def forward(self, joined: JoinedLevels) -> torch.Tensor:
        # Each point's level scale, as one vector over the points (one parameter per level).
        per_level = zip(self.scales.parameters(), joined.sizes, strict=True)
        scale = torch.cat([s.expand(size) for s, size in per_level])
        z = self.run_levels(joined) * scale[:, None]
        if self.activation == "relu":
            return torch.relu(z)
        # softplus(0) at padded points is not 0; the mask keeps them exactly 0 as before.
        return F.softplus(z) * joined.point_mask
