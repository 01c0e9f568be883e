"""AME, the Action Masking Encoder.

An actionness head predicts a soft mask ``m`` over time. The encoder splits the snippets into
positive components ``P = m ⊙ X`` (action) and negative components ``N = (1 − m) ⊙ X``
(background); each layer self-attends over ``X`` and then cross-attends from ``X`` to ``P``,
which pulls features toward the action content. A contrastive loss keeps action snippets
close to the positive prototype and away from the negative one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from amnet.kernels import group_attention
from amnet.model.blocks import MaskedConv1d, Mlp, merge_heads, split_heads


class ActionnessHead(nn.Module):
    """Conv(D→D/2, k3) → ReLU → Conv(→1): per-snippet actionness logits ``[B, T]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = MaskedConv1d(dim, dim // 2, 3)
        self.conv2 = MaskedConv1d(dim // 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x, mask)), mask).squeeze(-1)


class GlobalAttention(nn.Module):
    """Multi-head attention of queries from ``x`` over keys/values from ``source`` (global)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        # Numbers, not read off the tensors' shapes: the exported graph gets constants.
        self.dim, self.head_dim = dim, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(source).split(self.dim, dim=-1)  # fixed sizes: one Split node exported
        q, k, v = (split_heads(t, self.num_heads, self.head_dim) for t in (self.q(x), k, v))
        out = group_attention(q, k, v, [0] * self.num_heads, lengths, self.head_dim**-0.5)
        return self.drop(self.proj(merge_heads(out)))


class AMELayer(nn.Module):
    """Pre-norm: ``X += SelfAttn(X); X += CrossAttn(X → P); X += FFN(X)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = GlobalAttention(dim, num_heads, dropout)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_pos = nn.LayerNorm(dim)
        self.cross_attn = GlobalAttention(dim, num_heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio, dropout)

    def forward(
        self, x: torch.Tensor, actionness: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, lengths) * mask
        positive = self.norm_pos(x) * actionness
        x = x + self.cross_attn(self.norm_q(x), positive, lengths) * mask
        return x + self.mlp(self.norm_mlp(x)) * mask


class ActionMaskingEncoder(nn.Module):
    def __init__(
        self, dim: int, num_layers: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.actionness = ActionnessHead(dim)
        self.layers = nn.ModuleList(
            AMELayer(dim, num_heads, mlp_ratio, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns refined features ``[B, T, D]`` and actionness logits ``[B, T]``."""
        logits = self.actionness(x, mask)
        m = torch.sigmoid(logits).unsqueeze(-1) * mask
        for layer in self.layers:
            x = layer(x, m, mask, lengths)
        return self.norm(x) * mask, logits


def action_contrastive_loss(
    feats: torch.Tensor,
    actionness_logits: torch.Tensor,
    foreground: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE of action snippets against the video's positive and negative prototypes.

    Prototypes are the actionness-weighted means of ``P = m ⊙ X`` and ``N = (1 − m) ⊙ X`` over
    valid snippets. Each ground-truth action snippet must be closer (cosine / temperature) to
    its video's positive prototype than to the negative one. Videos without action add nothing.
    """
    m = torch.sigmoid(actionness_logits).unsqueeze(-1) * mask
    z = F.normalize(feats, dim=-1)
    pos = F.normalize((z * m).sum(1) / m.sum(1).clamp_min(1e-6), dim=-1)
    neg = F.normalize((z * (mask - m)).sum(1) / (mask - m).sum(1).clamp_min(1e-6), dim=-1)
    logits = (
        torch.stack([(z * pos[:, None]).sum(-1), (z * neg[:, None]).sum(-1)], dim=-1) / temperature
    )
    per_snippet = -F.log_softmax(logits, dim=-1)[..., 0]
    fg = foreground * mask.squeeze(-1)
    return (per_snippet * fg).sum() / fg.sum().clamp_min(1.0)
