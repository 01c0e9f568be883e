"""PyTorch reference of the fused group-based attention (DESIGN §5).

Same math as the Triton kernel, written with broadcasting only (no Python branching on tensor
values) so that it exports cleanly to ONNX and runs on any device.
"""

from __future__ import annotations

import torch


def visibility_mask(
    windows: torch.Tensor, lengths: torch.Tensor, t_q: int, t_k: int
) -> torch.Tensor:
    """Boolean ``[B, H, Tq, Tk]``: key j visible to query i of head h in video b.

    Visible iff both i and j are below the video's length and, for a windowed head
    (``w > 0``), ``|i - j| <= w // 2``.
    """
    device = lengths.device
    qi = torch.arange(t_q, device=device).view(1, 1, t_q, 1)
    kj = torch.arange(t_k, device=device).view(1, 1, 1, t_k)
    length = lengths.view(-1, 1, 1, 1)
    half = torch.div(windows, 2, rounding_mode="floor").view(1, -1, 1, 1)
    in_window = ((qi - kj).abs() <= half) | (windows.view(1, -1, 1, 1) <= 0)
    return in_window & (qi < length) & (kj < length)


def group_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked attention over ``[B, H, T, Dh]`` tensors; rows that see no key are 0."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mask = visibility_mask(windows.to(lengths.device), lengths, q.shape[-2], k.shape[-2])
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    # A finite fill keeps fully masked rows NaN-free; they are zeroed right after.
    scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1) * mask.any(dim=-1, keepdim=True).to(scores.dtype)
    return torch.matmul(probs, v.float()).to(q.dtype)
