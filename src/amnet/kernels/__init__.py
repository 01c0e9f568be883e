"""Group-based attention: the fused kernel's entry point and its PyTorch reference.

``group_attention(q, k, v, windows, lengths)`` is the one call AMNet's attention blocks make
(DESIGN §5). CUDA tensors run the fused Triton kernel, everything else the PyTorch reference;
``AMNET_ATTENTION=reference|triton`` forces a path (``triton`` on CPU tensors runs the kernel
through the Triton interpreter, which needs ``TRITON_INTERPRET=1`` before triton is imported).

triton is an optional extra: it is imported only when the Triton path actually runs.
"""

from __future__ import annotations

import importlib.util
import os
import weakref
from collections.abc import Sequence

import torch

from amnet.kernels.reference import group_attention_reference, visibility_mask

__all__ = [
    "BACKEND_ENV",
    "MAX_HEAD_DIM",
    "attention_backend",
    "group_attention",
    "group_attention_reference",
    "visibility_mask",
]

BACKEND_ENV = "AMNET_ATTENTION"
MAX_HEAD_DIM = 128
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_BACKENDS = ("reference", "triton")
# The last accelerator-resident lengths tensor whose range was checked (tensor, version, T):
# every attention layer of a pyramid level gets the same tensor, and checking it once saves a
# host sync per layer.
_checked_lengths: tuple[weakref.ref[torch.Tensor], int, int] | None = None
# Per-(windows, device) int32 tensors for the kernel, so that a call makes no host copy.
_window_tensors: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def attention_backend(device: torch.device | str | None = None, head_dim: int | None = None) -> str:
    """Which implementation ``group_attention`` uses for tensors on ``device``.

    ``"triton"`` or ``"reference"``. ``device=None`` means torch's default device. The
    ``AMNET_ATTENTION`` environment variable, when set to one of the two, wins. Heads wider
    than the kernel's ``MAX_HEAD_DIM`` (e.g. D 512 with 2 heads) take the reference unless
    Triton is forced, in which case ``group_attention`` refuses them.
    """
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced in _BACKENDS:
        return forced
    if head_dim is not None and head_dim > MAX_HEAD_DIM:
        return "reference"
    if forced not in ("", "auto"):
        raise ValueError(f"{BACKEND_ENV}: expected one of {', '.join(_BACKENDS)}, got {forced!r}")
    device = torch.get_default_device() if device is None else torch.device(device)
    if device.type == "cuda" and _triton_installed():
        return "triton"
    return "reference"


def _symbolic() -> bool:
    """True while tracing, compiling or exporting: value checks would bake in or break graphs."""
    return bool(
        torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
    )


def _windows_list(windows: Sequence[int] | torch.Tensor, num_heads: int) -> list[int]:
    if isinstance(windows, torch.Tensor):
        if windows.ndim != 1 or windows.dtype.is_floating_point or windows.dtype.is_complex:
            raise ValueError(
                f"windows: expected a 1-D integer tensor, got {windows.dtype} {list(windows.shape)}"
            )
        values = [int(w) for w in windows.tolist()]
    else:
        try:
            values = [int(w) for w in windows]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"windows: expected a sequence of ints, got {windows!r}") from exc
    if len(values) != num_heads:
        raise ValueError(f"windows: expected one window per head ({num_heads}), got {len(values)}")
    if any(w < 0 for w in values):
        raise ValueError(f"windows: must be >= 0 (0 = global), got {values}")
    return values


def _validate(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor
) -> tuple[int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}: unsupported dtype {t.dtype} (float32, float16, bfloat16)")
    if q.ndim != 4:
        raise ValueError(f"q: expected [B, H, T, Dh], got shape {list(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name}: shape {list(t.shape)} differs from q's {list(q.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name}: dtype {t.dtype} differs from q's {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: device {t.device} differs from q's {q.device}")
    batch, heads, seq_len, head_dim = q.shape
    if head_dim < 1:
        raise ValueError(f"q: head size {head_dim} must be at least 1")
    if not isinstance(lengths, torch.Tensor):
        raise ValueError(f"lengths: expected a [B] integer tensor, got {type(lengths).__name__}")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths: expected shape [{batch}], got {list(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths: expected an integer tensor, got {lengths.dtype}")
    if batch and not _symbolic():
        _check_lengths_range(lengths, seq_len)
    return batch, heads, seq_len, head_dim


def _check_lengths_range(lengths: torch.Tensor, seq_len: int) -> None:
    global _checked_lengths
    on_host = lengths.device.type == "cpu"
    # Inference tensors (torch.inference_mode) have no version counter, so an in-place change
    # could not be seen: they are checked on every call.
    cacheable = not on_host and not lengths.is_inference()
    seen = _checked_lengths
    if (
        cacheable
        and seen is not None
        and seen[0]() is lengths
        and (seen[1], seen[2]) == (lengths._version, seq_len)
    ):
        return
    # One reduction and one host transfer (a single sync when lengths live on a GPU).
    lo, hi = torch.aminmax(lengths)
    lo_v, hi_v = torch.stack((lo, hi)).tolist()
    if lo_v < 0 or hi_v > seq_len:
        raise ValueError(f"lengths: must lie in [0, T={seq_len}], got min {lo_v}, max {hi_v}")
    if cacheable:
        _checked_lengths = (weakref.ref(lengths), lengths._version, seq_len)


def _window_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    key = (tuple(values), device)
    win = _window_tensors.get(key)
    if win is None:
        win = _window_tensors[key] = torch.tensor(values, dtype=torch.int32, device=device)
    return win


def group_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: Sequence[int] | torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention where each head has its own window (0 = global) and each video a valid length.

    q, k, v: ``[B, H, T, Dh]`` (float32, float16 or bfloat16, same dtype and device; the Triton
    kernel takes Dh <= 128, wider heads run the reference).
    windows: one int >= 0 per head; for ``w > 0`` key j is visible to query i iff
    ``|i - j| <= w // 2``. lengths: ``[B]`` ints in ``[0, T]``; keys at or past the length are
    invisible and query rows at or past it return 0, as does any row that sees no key.
    scale: defaults to ``Dh ** -0.5``. Raises ValueError, naming the argument, on bad input.
    """
    _, heads, _, head_dim = _validate(q, k, v, lengths)
    backend = attention_backend(q.device, head_dim)
    if backend == "triton":
        if head_dim > MAX_HEAD_DIM:
            raise ValueError(f"q: head size {head_dim} above the Triton kernel's {MAX_HEAD_DIM}")
        win_values = _windows_list(windows, heads)
        # Imported here so that importing amnet.kernels never imports triton.
        from amnet.kernels.group_attention_triton import group_attention_triton, interpreting

        if q.device.type != "cuda" and not interpreting():
            raise RuntimeError(
                "group_attention: the Triton path on non-CUDA tensors needs TRITON_INTERPRET=1 "
                "set before triton is imported"
            )
        return group_attention_triton(q, k, v, _window_tensor(win_values, q.device), lengths, scale)
    win: torch.Tensor | list[int]
    if _symbolic() and isinstance(windows, torch.Tensor):
        win = windows.to(device=q.device, dtype=torch.int64)
    else:
        # A plain list lets the reference skip the window bias when every head is global.
        win = _windows_list(windows, heads)
    return group_attention_reference(q, k, v, win, lengths.to(q.device), scale)
