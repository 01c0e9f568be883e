"""PyTorch reference of the fused group-based attention (DESIGN §5).

Same math as the Triton kernel, written with broadcasting only (no Python branching on tensor
values) so that it exports cleanly to ONNX and runs on any device. It is also the CPU path, so
it avoids passes over the ``[B, H, T, T]`` scores: masking is two broadcast adds of small bias
tensors, and rows past a video's length are zeroed on the ``[B, H, T, Dh]`` output instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def _key_bias(lengths: torch.Tensor, t_k: int) -> torch.Tensor:
    """``[B, 1, 1, Tk]``: 0 for keys below the video's length, ``_MASKED`` past it."""
    keys = torch.arange(t_k, device=lengths.device)
    return torch.where(keys < lengths[:, None], 0.0, _MASKED)[:, None, None, :]


def _tracing() -> bool:
    """True while a graph is being recorded (ONNX export): the explicit forms are traced."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor | None,
    key_bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention over the full ``[T, T]`` scores (global heads; ``windows`` None: no window),
    written out: scores, biases, softmax, the product with v."""
    scores = _dense_scores(q, k, windows, key_bias, scale)
    return torch.matmul(torch.softmax(scores, dim=-1), v.float())


def _dense_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    windows: torch.Tensor | None,
    key_bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """The biased ``[B, H, Tq, Tk]`` scores of :func:`_dense`, before the softmax."""
    scores = torch.matmul(q.float() * scale, k.float().transpose(-1, -2))
    if windows is not None:
        scores = scores + _window_bias(windows, q.shape[-2], k.shape[-2], q.device)
    return scores + key_bias


def _global(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor, scale: float
) -> torch.Tensor:
    """Global heads. Run eagerly, PyTorch's fused attention with the key bias as its additive
    mask: the same arithmetic without the ``[T, T]`` score tensor and its passes (on a CPU the
    paper-size model 1.22x faster on a window, benchmarks/bench_attention_forms.py). Traced for
    export, the written-out form."""
    if _tracing():
        return _dense(q, k, v, None, key_bias, scale)
    return torch.nn.functional.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), attn_mask=key_bias, scale=scale
    )


def _band_bias(t: int, half: int, lengths: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[B, 1, T, S]``: 0 where band column d of query i (key ``i + d - half``) lies inside the
    video, ``_MASKED`` where it is padding or past the length, as in the dense form."""
    span = 2 * half + 1
    key = torch.arange(t, device=device)[:, None] + torch.arange(span, device=device) - half
    visible = (key >= 0) & (key < lengths[:, None, None])  # [B, T, S]
    return torch.where(visible, 0.0, _MASKED)[:, None]


def _banded_shifted(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int, half: int, bias: torch.Tensor
) -> torch.Tensor:
    """The band one diagonal at a time: the scores of offset d are the row-wise dot products
    of q with the keys shifted by d, and the output sums the values shifted by d weighted by
    that column of the probabilities. Elementwise passes over ``[B, H, T, Dh]`` only."""
    k_pad = torch.nn.functional.pad(k, (0, 0, half, half))
    v_pad = torch.nn.functional.pad(v, (0, 0, half, half))
    span = 2 * half + 1
    scores = torch.stack([(q * k_pad[:, :, d : d + t]).sum(-1) for d in range(span)], dim=-1)
    probs = torch.softmax(scores + bias, dim=-1)  # [B, H, T, S]
    out = probs[..., 0:1] * v_pad[:, :, 0:t]
    for d in range(1, span):
        out = out + probs[..., d : d + 1] * v_pad[:, :, d : d + t]
    return out


def _banded_gathered(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int, half: int, bias: torch.Tensor
) -> torch.Tensor:
    """The band gathered into ``[B, H, T, S, Dh]`` keys and values by one index (row
    ``i * S + d`` takes padded key ``i + d``: a single Gather in ONNX), then one small matrix
    product per query for the scores and one for the output."""
    k_band, v_band = _band_gather(k, v, t, half)
    scores = torch.matmul(k_band, q.unsqueeze(-1)).squeeze(-1)  # [B, H, T, S]
    probs = torch.softmax(scores + bias, dim=-1)
    return torch.matmul(probs.unsqueeze(-2), v_band).squeeze(-2)


def _band_gather(
    k: torch.Tensor, v: torch.Tensor, t: int, half: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The band's keys and values ``[B, H, T, S, Dh]`` of :func:`_banded_gathered`."""
    k_pad = torch.nn.functional.pad(k, (0, 0, half, half))
    v_pad = torch.nn.functional.pad(v, (0, 0, half, half))
    span = 2 * half + 1
    index = torch.arange(t, device=k.device)[:, None] + torch.arange(span, device=k.device)
    index = index.flatten()
    b, h, dh = k.shape[0], k.shape[1], k.shape[-1]
    k_band = k_pad.index_select(2, index).view(b, h, t, span, dh)
    v_band = v_pad.index_select(2, index).view(b, h, t, span, dh)
    return k_band, v_band


def _banded(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    lengths: torch.Tensor,
    scale: float,
    form: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Windowed attention computed on the band only: query i scores the ``2 * (w // 2) + 1``
    keys ``i - w // 2 .. i + w // 2``, so cost and memory are O(T * w), not O(T^2). Keys
    outside the video get the same bias as in the dense form, so the result equals it up to
    rounding.

    Two forms of the same arithmetic, each where it is faster (benchmarks/
    bench_attention_forms.py). Run eagerly (training and the PyTorch backend on a CPU), one
    diagonal at a time: 2-9x faster than the gathered form, without its ``[B, H, T, S, Dh]``
    copies. Traced for export, the gathered form: across the exported runtimes the two forms
    measured within their run-to-run spread, and its band is one Gather per tensor, so the
    graph is the smallest (faster export, loads and quantization). ``form`` pins one (the
    benchmark compares them)."""
    half, t = window // 2, q.shape[-2]
    bias = _band_bias(t, half, lengths, q.device)
    if form is None:
        form = _banded_gathered if _tracing() else _banded_shifted
    return form(q.float() * scale, k.float(), v.float(), t, half, bias)


def _runs(windows: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(start, end, window)`` for each run of consecutive heads with the same window."""
    runs: list[tuple[int, int, int]] = []
    for h, w in enumerate(int(w) for w in windows):
        w = max(w, 0)
        if runs and runs[-1][2] == w:
            runs[-1] = (runs[-1][0], h + 1, w)
        else:
            runs.append((h, h + 1, w))
    return runs


def group_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor | Sequence[int],
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Masked attention over ``[B, H, T, Dh]`` tensors; rows that see no key are 0.

    With ``windows`` as a list (the model's case) heads are taken in runs of equal window:
    global heads over the full ``[T, T]`` scores, windowed heads on their band only (O(T * w)).
    A ``windows`` tensor takes the dense form for every head (the definition the kernel and the
    band are tested against).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    t_q, t_k = q.shape[-2], k.shape[-2]
    device = q.device
    lengths = lengths.to(device)
    if isinstance(windows, torch.Tensor):
        out = _dense(q, k, v, windows.to(device), _key_bias(lengths, t_k), scale)
    else:
        key_bias = None
        parts = []
        for start, end, window in _runs(windows):
            whole = start == 0 and end == q.shape[1]  # no Slice nodes in the exported graph
            qh, kh, vh = (q, k, v) if whole else (q[:, start:end], k[:, start:end], v[:, start:end])
            if window > 0 and t_q == t_k:
                parts.append(_banded(qh, kh, vh, window, lengths, scale))
            else:
                if key_bias is None:  # built once per call, shared by the global runs
                    key_bias = _key_bias(lengths, t_k)
                if window <= 0:
                    parts.append(_global(qh, kh, vh, key_bias, scale))
                else:  # windowed heads over keys of another length: no band
                    win = torch.full((end - start,), window, device=device)
                    parts.append(_dense(qh, kh, vh, win, key_bias, scale))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    # A query row below the length always sees itself, so only rows past it see no key.
    row_valid = (torch.arange(t_q, device=device) < lengths[:, None]).to(out.dtype)
    return (out * row_valid[:, None, :, None]).to(q.dtype)
