"""Building blocks shared by the embedding, AME, GAM and the heads.

Tensors are channel-last ``[B, T, C]`` throughout; ``mask`` is ``[B, T, 1]`` float (1 = valid).
Every block re-applies the mask to its output so padding never leaks into real positions.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MaskedConv1d(nn.Module):
    """A same-padded 1-D convolution over ``[B, T, C]`` whose output is zero at padding."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd so the convolution keeps T")
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2) * mask


class ConvNormAct(nn.Module):
    """MaskedConv1d → LayerNorm → ReLU."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = MaskedConv1d(in_dim, out_dim, kernel_size, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x, mask))) * mask


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * ratio)
        self.fc2 = nn.Linear(dim * ratio, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Scale(nn.Module):
    """A learnable scalar (one per pyramid level for the regression head, which applies them all
    at once); a module of its own for the checkpoints' ``scales.<level>.scale`` names."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init, dtype=torch.float32))


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """``[B, T, H*Dh]`` → ``[B, H, T, Dh]``. The head sizes are given as numbers: exported,
    only B and T are read off x's shape, with no arithmetic on them."""
    return x.view(x.shape[0], x.shape[1], num_heads, head_dim).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, Dh]`` → ``[B, T, H*Dh]``."""
    return x.transpose(1, 2).flatten(2)


def masked_max_pool(
    x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stride-2 max-pool (kernel 3) that never takes a padded value.

    Returns the pooled features, the new mask and the new lengths ``ceil(length / 2)``.
    """
    # Scalars, not full_like/zeros_like tensors: exported, constants instead of a shape read and
    # a ConstantOfShape each.
    filled = torch.where(mask > 0, x, float("-inf"))
    pooled = F.max_pool1d(filled.transpose(1, 2), kernel_size=3, stride=2, padding=1).transpose(
        1, 2
    )
    # Lengths are >= 0, where truncation is the floor: exported, one integer Div, where floor
    # division takes a Div and five ops fixing the sign.
    new_lengths = torch.div(lengths + 1, 2, rounding_mode="trunc")
    new_mask = (
        (torch.arange(pooled.shape[1], device=x.device)[None, :] < new_lengths[:, None])
        .unsqueeze(-1)
        .to(x.dtype)
    )
    # where(), not a product: rows past the length pooled only -inf, and -inf * 0 is NaN.
    pooled = torch.where(new_mask > 0, pooled, 0.0)
    return pooled, new_mask, new_lengths
