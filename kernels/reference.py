"""PyTorch reference of the fused group-based attention (DESIGN §5).

Same math as the Triton kernel, written with broadcasting only (no Python branching on tensor
values) so that it exports cleanly to ONNX and runs on any device. It is also the CPU path, so
it avoids passes over the ``[B, H, T, T]`` scores: masking is two broadcast adds of small bias
tensors, and rows past a video's length are zeroed on the ``[B, H, T, Dh]`` output instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Added to the scores of invisible keys. Far enough below any real score (LayerNorm'd inputs
# keep those within a few hundred) that exp() underflows to exactly 0, and small enough that
# twice it stays finite even in float16 (a TensorRT FP16 engine), so a row that sees no key
# gives a uniform softmax, never NaN; such rows are zeroed afterwards.
_MASKED = -2.0e4


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


def _window_bias(windows: torch.Tensor, t_q: int, t_k: int, device: torch.device) -> torch.Tensor:
    """``[H, Tq, Tk]``: 0 where the head's window lets query i see key j, else ``_MASKED``."""
    qi = torch.arange(t_q, device=device).view(1, t_q, 1)
    kj = torch.arange(t_k, device=device).view(1, 1, t_k)
    windows = windows.to(device).view(-1, 1, 1)
    half = torch.div(windows, 2, rounding_mode="floor")
    visible = ((qi - kj).abs() <= half) | (windows <= 0)
    return torch.where(visible, 0.0, _MASKED)


def group_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor | Sequence[int],
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked attention over ``[B, H, T, Dh]`` tensors; rows that see no key are 0.

    ``windows`` may be a tensor or a list; a list of zeros (all heads global) skips the window
    bias altogether.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t_q, t_k = q.shape[-2], k.shape[-2]
    device = q.device
    scores = torch.matmul(q.float() * scale, k.float().transpose(-1, -2))
    all_global = not isinstance(windows, torch.Tensor) and all(int(w) <= 0 for w in windows)
    if not all_global:
        w = (
            windows
            if isinstance(windows, torch.Tensor)
            else torch.tensor(list(windows), device=device)
        )
        scores = scores + _window_bias(w, t_q, t_k, device)
    lengths = lengths.to(device)
    key_bias = torch.where(
        torch.arange(t_k, device=device).view(1, t_k) < lengths.view(-1, 1), 0.0, _MASKED
    )
    scores = scores + key_bias.view(-1, 1, 1, t_k)
    out = torch.matmul(torch.softmax(scores, dim=-1), v.float())
    # A query row below the length always sees itself, so only rows past it see no key.
    row_valid = (torch.arange(t_q, device=device).view(1, t_q) < lengths.view(-1, 1)).to(out.dtype)
    return (out * row_valid.view(-1, 1, t_q, 1)).to(q.dtype)
