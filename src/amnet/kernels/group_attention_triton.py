"""Fused group-based attention in Triton: forward and backward (DESIGN §5).

Each head has its own window (0 = global, ``w > 0``: key j visible to query i iff
``|i - j| <= w // 2``) and each video a valid length. The kernels are FlashAttention-style
(tiled online softmax, fp32 accumulation, the row log-sum-exp saved for the backward pass).

Block sparsity is real, not a mask: every program derives the range of partner tiles it can
possibly see from its own tile, the head's window and the video's length, and loops over that
range only. The visible span of a contiguous block of positions ``[s, e)`` is itself contiguous
(``[s - w//2, e - 1 + w//2]`` clipped to ``[0, length)``), and the relation is symmetric, so the
same helper bounds the key loop of a query tile and the query loop of a key tile. A tile pair is
visited iff it holds at least one visible (query, key) pair; ``tile_counter`` lets tests check it.

Importing this module imports triton: ``amnet.kernels`` only imports it lazily. Whether the
kernels run through the Triton interpreter is decided by triton when this module is imported
(``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import triton
import triton.language as tl

logger = logging.getLogger(__name__)
_R = TypeVar("_R")

__all__ = [
    "TILE_COUNTER_SLOTS",
    "BlockSizes",
    "default_block_sizes",
    "group_attention_triton",
    "interpreting",
]

# log2(e): the kernels use exp2, so scores are carried in base-2 units.
_LOG2E = 1.4426950408889634
# Slots of the optional tile counter: forward, backward dK/dV, backward dQ.
TILE_COUNTER_SLOTS = 3
MAX_HEAD_DIM = 128
# Sequence length and head count vary from call to call; specialising on them (== 1,
# divisible by 16) would only multiply compilations.
_NO_SPECIALIZE = ["num_heads", "seq_len"]


@triton.jit
def _partner_span(start, BLOCK: tl.constexpr, window, length, ALIGN: tl.constexpr):
    """Range ``[lo, hi)`` of partner positions a tile ``[start, start + BLOCK)`` can see.

    ``lo`` is rounded down to a multiple of ``ALIGN`` (the partner tile size). An empty range
    (``lo >= hi``) when the tile starts at or past the length.
    """
    end = tl.minimum(start + BLOCK, length)
    half = window // 2
    lo = tl.where(window > 0, tl.maximum(start - half, 0), 0)
    hi = tl.where(window > 0, tl.minimum(end + half, length), length)
    hi = tl.where(start < length, hi, 0)
    lo = (lo // ALIGN) * ALIGN
    return lo, hi


@triton.jit
def _visible(offs_q, offs_k, window, length):
    """Boolean ``[len(offs_q), len(offs_k)]`` visibility, the same rule as the reference."""
    diff = offs_q[:, None] - offs_k[None, :]
    in_window = ((diff <= window // 2) & (diff >= -(window // 2))) | (window <= 0)
    return in_window & (offs_q[:, None] < length) & (offs_k[None, :] < length)


@triton.jit
def _dense_end(lo, hi, window, length, BLOCK: tl.constexpr):
    """End of the leading run of partner tiles that need no visibility mask.

    Only for a global head: partner tiles wholly below the length are fully visible to rows
    below the length (rows past it are handled by the callers). A windowed head's few tiles
    are all masked.
    """
    dense = tl.where(window <= 0, (length // BLOCK) * BLOCK, lo)
    return tl.minimum(tl.maximum(dense, lo), hi)


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q, k_base, v_base, s_kt, s_kd, s_vt, s_vd,
    offs_m, offs_d, d_ok, lo, hi, window, length, qk_scale, COUNTER,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, COUNT_TILES: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Online-softmax accumulation over the key tiles starting in ``[lo, hi)``."""
    for start_n in range(lo, hi, BLOCK_N):
        if COUNT_TILES:
            tl.atomic_add(COUNTER, 1)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n[:, None] < length) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * s_kt + offs_d[None, :] * s_kd, mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if MASKED:
            s = tl.where(_visible(offs_m, offs_n, window, length), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps m = -inf; subtracting 0 instead keeps exp2 finite.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * s_vt + offs_d[None, :] * s_vd, mask=kv_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _fwd_kernel(
    Q, K, V, OUT, LSE, WIN, LEN, COUNTER,
    s_qb, s_qh, s_qt, s_qd,
    s_kb, s_kh, s_kt, s_kd,
    s_vb, s_vh, s_vt, s_vd,
    s_ob, s_oh, s_ot, s_od,
    num_heads, seq_len, head_dim, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    COUNT_TILES: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    window = tl.load(WIN + h)
    length = tl.load(LEN + b)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    row_ok = offs_m < length
    q_ptrs = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :] * s_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo, hi = _partner_span(start_m, BLOCK_M, window, length, BLOCK_N)
    mid = _dense_end(lo, hi, window, length, BLOCK_N)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, k_base, v_base, s_kt, s_kd, s_vt, s_vd,
        offs_m, offs_d, d_ok, lo, mid, window, length, qk_scale, COUNTER,
        BLOCK_N, False, COUNT_TILES, PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, k_base, v_base, s_kt, s_kd, s_vt, s_vd,
        offs_m, offs_d, d_ok, mid, hi, window, length, qk_scale, COUNTER,
        BLOCK_N, True, COUNT_TILES, PRECISION,
    )  # fmt: skip

    # Rows past the length (computed unmasked against q = 0 in the dense run) and rows that saw
    # no key give 0, with lse = +inf so that the backward pass recomputes probabilities of
    # exactly 0 for them.
    valid = row_ok & (l_i > 0.0)
    l_safe = tl.where(valid, l_i, 1.0)
    out = tl.where(valid[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(valid, m_i + tl.math.log2(l_safe), float("inf"))
    in_seq = offs_m < seq_len
    o_ptrs = OUT + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :] * s_od
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=in_seq[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * seq_len + offs_m, lse, mask=in_seq)


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_delta_kernel(
    OUT, DO, DELTA,
    s_ob, s_oh, s_ot, s_od,
    s_db, s_dh, s_dt, s_dd,
    num_heads, seq_len, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """delta_i = sum_d dO_id * O_id, the softmax-gradient correction term per row."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m[:, None] < seq_len) & (offs_d[None, :] < head_dim)
    o = tl.load(
        OUT + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :] * s_od,
        mask=ok,
        other=0.0,
    )
    do = tl.load(
        DO + b * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_d[None, :] * s_dd,
        mask=ok,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * seq_len + offs_m, delta, mask=offs_m < seq_len)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v, q_base, do_base, LSE, DELTA, row_base,
    s_qt, s_qd, s_dt, s_dd, offs_n, offs_d, d_ok, lo, hi, window, length, qk_scale, COUNTER,
    BLOCK_M: tl.constexpr, MASKED: tl.constexpr, COUNT_TILES: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """dK, dV contributions of the query tiles starting in ``[lo, hi)``, on transposed scores
    (keys x queries) so that no [M, N] tile needs transposing."""
    for start_m in range(lo, hi, BLOCK_M):
        if COUNT_TILES:
            tl.atomic_add(COUNTER + 1, 1)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < length
        q_ok = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * s_qt + offs_d[None, :] * s_qd, mask=q_ok, other=0.0)
        do = tl.load(
            do_base + offs_m[:, None] * s_dt + offs_d[None, :] * s_dd, mask=q_ok, other=0.0
        )
        # Rows past the length load lse = +inf: their probabilities are 0 even unmasked.
        lse = tl.load(LSE + row_base + offs_m, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        p_t = tl.math.exp2(s_t - lse[None, :])
        if MASKED:
            p_t = tl.where(_visible(offs_n, offs_m, window, length), p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, WIN, LEN, COUNTER,
    s_qb, s_qh, s_qt, s_qd,
    s_kb, s_kh, s_kt, s_kd,
    s_vb, s_vh, s_vt, s_vd,
    s_db, s_dh, s_dt, s_dd,
    num_heads, seq_len, head_dim, qk_scale, sm_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    COUNT_TILES: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per key tile: dK, dV summed over the query tiles that can see it."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    window = tl.load(WIN + h)
    length = tl.load(LEN + b)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    key_ok = offs_n < length
    kv_ok = key_ok[:, None] & d_ok[None, :]
    k = tl.load(
        K + b * s_kb + h * s_kh + offs_n[:, None] * s_kt + offs_d[None, :] * s_kd,
        mask=kv_ok,
        other=0.0,
    )
    v = tl.load(
        V + b * s_vb + h * s_vh + offs_n[:, None] * s_vt + offs_d[None, :] * s_vd,
        mask=kv_ok,
        other=0.0,
    )
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_db + h * s_dh
    row_base = pid_bh.to(tl.int64) * seq_len

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo, hi = _partner_span(start_n, BLOCK_N, window, length, BLOCK_M)
    # A global head needs no mask here: query rows past the length have p = 0 (lse = +inf) and
    # the gradients of keys past the length only land in their own rows, zeroed below.
    mid = tl.where(window <= 0, hi, lo)
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, q_base, do_base, LSE, DELTA, row_base,
        s_qt, s_qd, s_dt, s_dd, offs_n, offs_d, d_ok, lo, mid, window, length, qk_scale, COUNTER,
        BLOCK_M, False, COUNT_TILES, PRECISION,
    )  # fmt: skip
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, q_base, do_base, LSE, DELTA, row_base,
        s_qt, s_qd, s_dt, s_dd, offs_n, offs_d, d_ok, mid, hi, window, length, qk_scale, COUNTER,
        BLOCK_M, True, COUNT_TILES, PRECISION,
    )  # fmt: skip
    dk = tl.where(key_ok[:, None], dk * sm_scale, 0.0)
    dv = tl.where(key_ok[:, None], dv, 0.0)

    out_ok = (offs_n[:, None] < seq_len) & d_ok[None, :]
    # dK/dV are contiguous [B, H, T, Dh] tensors allocated by the wrapper.
    out_off = (
        pid_bh.to(tl.int64) * seq_len * head_dim + offs_n[:, None] * head_dim + offs_d[None, :]
    )
    tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=out_ok)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=out_ok)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta, k_base, v_base, s_kt, s_kd, s_vt, s_vd,
    offs_m, offs_d, d_ok, lo, hi, window, length, qk_scale, COUNTER,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, COUNT_TILES: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """dQ contributions of the key tiles starting in ``[lo, hi)``."""
    for start_n in range(lo, hi, BLOCK_N):
        if COUNT_TILES:
            tl.atomic_add(COUNTER + 2, 1)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv_ok = (offs_n[:, None] < length) & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None] * s_kt + offs_d[None, :] * s_kd, mask=kv_ok, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * s_vt + offs_d[None, :] * s_vd, mask=kv_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            p = tl.where(_visible(offs_m, offs_n, window, length), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, WIN, LEN, COUNTER,
    s_qb, s_qh, s_qt, s_qd,
    s_kb, s_kh, s_kt, s_kd,
    s_vb, s_vh, s_vt, s_vd,
    s_db, s_dh, s_dt, s_dd,
    num_heads, seq_len, head_dim, qk_scale, sm_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    COUNT_TILES: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per query tile: dQ summed over the key tiles it can see."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // num_heads).to(tl.int64)
    h = (pid_bh % num_heads).to(tl.int64)
    window = tl.load(WIN + h)
    length = tl.load(LEN + b)

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    m_ok = offs_m < length
    q_ok = m_ok[:, None] & d_ok[None, :]
    q = tl.load(
        Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :] * s_qd,
        mask=q_ok,
        other=0.0,
    )
    do = tl.load(
        DO + b * s_db + h * s_dh + offs_m[:, None] * s_dt + offs_d[None, :] * s_dd,
        mask=q_ok,
        other=0.0,
    )
    row_base = pid_bh.to(tl.int64) * seq_len
    # Rows past the length load lse = +inf: their probabilities are 0 even unmasked.
    lse = tl.load(LSE + row_base + offs_m, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + row_base + offs_m, mask=m_ok, other=0.0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    lo, hi = _partner_span(start_m, BLOCK_M, window, length, BLOCK_N)
    mid = _dense_end(lo, hi, window, length, BLOCK_N)
    dq = _dq_tiles(
        dq, q, do, lse, delta, k_base, v_base, s_kt, s_kd, s_vt, s_vd,
        offs_m, offs_d, d_ok, lo, mid, window, length, qk_scale, COUNTER,
        BLOCK_N, False, COUNT_TILES, PRECISION,
    )  # fmt: skip
    dq = _dq_tiles(
        dq, q, do, lse, delta, k_base, v_base, s_kt, s_kd, s_vt, s_vd,
        offs_m, offs_d, d_ok, mid, hi, window, length, qk_scale, COUNTER,
        BLOCK_N, True, COUNT_TILES, PRECISION,
    )  # fmt: skip
    dq = tl.where(m_ok[:, None], dq * sm_scale, 0.0)

    out_off = (
        pid_bh.to(tl.int64) * seq_len * head_dim + offs_m[:, None] * head_dim + offs_d[None, :]
    )
    out_ok = (offs_m[:, None] < seq_len) & d_ok[None, :]
    tl.store(DQ + out_off, dq.to(DQ.dtype.element_ty), mask=out_ok)


def interpreting() -> bool:
    """Whether triton runs these kernels through its interpreter (fixed at import time)."""
    return type(_fwd_kernel).__name__ == "InterpretedFunction"


@dataclass(frozen=True)
class BlockSizes:
    """Tile sizes and launch parameters of the forward and backward kernels.

    The forward kernel takes ``fwd_m`` queries x ``fwd_n`` keys per step. The dK/dV kernel
    holds a key tile of ``bwd_n`` and loops over query tiles of ``bwd_m``; the dQ kernel holds
    a query tile of ``dq_m`` and loops over key tiles of ``dq_n`` (both default to the dK/dV
    sizes). Each backward kernel does best with a large resident tile and small streamed ones.
    """

    fwd_m: int
    fwd_n: int
    bwd_m: int
    bwd_n: int
    num_warps: int = 4
    fwd_stages: int = 2
    bwd_stages: int = 2
    dq_m: int = 0  # 0: bwd_m
    dq_n: int = 0  # 0: bwd_n

    def __post_init__(self) -> None:
        if not self.dq_m:
            object.__setattr__(self, "dq_m", self.bwd_m)
        if not self.dq_n:
            object.__setattr__(self, "dq_n", self.bwd_n)
        for name in ("fwd_m", "fwd_n", "bwd_m", "bwd_n", "dq_m", "dq_n"):
            value = getattr(self, name)
            # tl.dot needs every tile dimension to be a power of two of at least 16.
            if value < 16 or value & (value - 1):
                raise ValueError(f"{name}: block size must be a power of two >= 16, got {value}")

    def halved(self) -> BlockSizes:
        """Smaller tiles, for a retry when a configuration runs out of shared memory."""
        return BlockSizes(
            max(16, self.fwd_m // 2),
            max(16, self.fwd_n // 2),
            max(16, self.bwd_m // 2),
            max(16, self.bwd_n // 2),
            num_warps=self.num_warps,
            fwd_stages=1,
            bwd_stages=1,
            dq_m=max(16, self.dq_m // 2),
            dq_n=max(16, self.dq_n // 2),
        )


def default_block_sizes(dtype: torch.dtype, head_dim: int) -> BlockSizes:
    """Tile sizes for a dtype and head size.

    Under the interpreter, 16-wide tiles keep several tiles per sequence in short tests. On a
    GPU the choices were checked by compiling for sm_90 and reading the register and
    shared-memory use: the largest tiles without register spills at 8 warps. 16-bit inputs
    (tensor cores) take large tiles; fp32 is computed exactly ("ieee"), without tensor cores,
    and needs small ones. For 16-bit heads of up to 64, eleven candidates were timed side by
    side on an H200 (``benchmarks/tune_attention_blocks.py``, docs/BENCHMARKS.md): backward
    tiles that keep a 64-row tile resident and stream 32-row partners, at 4 warps, halved the
    forward+backward time at T = 12,551 (3.38 against 6.48 ms) and matched it at 2,304. At 4
    warps the forward takes 64-row query tiles: 128-row tiles at 4 warps measured 0.18 ms against
    0.13 ms at T = 2,304.
    """
    if interpreting():
        return BlockSizes(16, 16, 16, 16)
    if dtype == torch.float32:
        if head_dim > 64:
            return BlockSizes(32, 16, 32, 16, num_warps=8)
        return BlockSizes(64, 32, 32, 32, num_warps=8)
    if head_dim > 64:
        return BlockSizes(128, 32, 32, 64, num_warps=8, fwd_stages=3)
    return BlockSizes(64, 64, 32, 64, num_warps=4, fwd_stages=3, dq_m=64, dq_n=32)


def _head_block(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs are computed exactly ("ieee"), matching PyTorch's default fp32 matmul; the
    # fast path is fp16/bf16, where the setting has no effect.
    return "ieee" if dtype == torch.float32 else "tf32"


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    s = t.stride()
    return s[0], s[1], s[2], s[3]


def _launch(fn: Callable[..., _R], *args: object, blocks: BlockSizes) -> _R:
    """Run ``fn(*args, blocks)``; on a GPU out of shared memory, retry once with halved tiles."""
    try:
        return fn(*args, blocks)
    except triton.runtime.errors.OutOfResources as exc:
        smaller = blocks.halved()
        logger.warning("group attention: %s with %s; retrying with %s", exc, blocks, smaller)
        return fn(*args, smaller)


def _forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
    counter: torch.Tensor,
    count_tiles: bool,
    blocks: BlockSizes,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, seq_len, head_dim = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(seq_len, blocks.fwd_m), batch * heads)
    _fwd_kernel[grid](
        q, k, v, out, lse, windows, lengths, counter,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out),
        heads, seq_len, head_dim, scale * _LOG2E,
        BLOCK_M=blocks.fwd_m, BLOCK_N=blocks.fwd_n, BLOCK_D=_head_block(head_dim),
        COUNT_TILES=count_tiles, PRECISION=_precision(q.dtype),
        num_warps=blocks.num_warps, num_stages=blocks.fwd_stages,
    )  # fmt: skip
    return out, lse


def _backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    grad_out: torch.Tensor,
    windows: torch.Tensor,
    lengths: torch.Tensor,
    scale: float,
    counter: torch.Tensor,
    count_tiles: bool,
    blocks: BlockSizes,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, heads, seq_len, head_dim = q.shape
    block_d = _head_block(head_dim)
    delta = torch.empty((batch, heads, seq_len), dtype=torch.float32, device=q.device)
    _bwd_delta_kernel[(triton.cdiv(seq_len, 64), batch * heads)](
        out, grad_out, delta,
        *_strides(out), *_strides(grad_out),
        heads, seq_len, head_dim,
        BLOCK_M=64, BLOCK_D=block_d,
    )  # fmt: skip
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(q.shape, dtype=k.dtype, device=q.device)
    dv = torch.empty(q.shape, dtype=v.dtype, device=q.device)
    common = dict(
        BLOCK_D=block_d, COUNT_TILES=count_tiles, PRECISION=_precision(q.dtype),
        num_warps=blocks.num_warps, num_stages=blocks.bwd_stages,
    )  # fmt: skip
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
    scalars = (heads, seq_len, head_dim, scale * _LOG2E, scale)
    _bwd_dkdv_kernel[(triton.cdiv(seq_len, blocks.bwd_n), batch * heads)](
        q, k, v, grad_out, lse, delta, dk, dv, windows, lengths, counter,
        *strides, *scalars, BLOCK_M=blocks.bwd_m, BLOCK_N=blocks.bwd_n, **common,
    )  # fmt: skip
    _bwd_dq_kernel[(triton.cdiv(seq_len, blocks.dq_m), batch * heads)](
        q, k, v, grad_out, lse, delta, dq, windows, lengths, counter,
        *strides, *scalars, BLOCK_M=blocks.dq_m, BLOCK_N=blocks.dq_n, **common,
    )  # fmt: skip
    return dq, dk, dv


class _GroupAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,  # FunctionCtx, which carries what the backward pass needs
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        windows: torch.Tensor,
        lengths: torch.Tensor,
        scale: float,
        counter: torch.Tensor | None,
        blocks: BlockSizes,
    ) -> torch.Tensor:
        count_tiles = counter is not None
        slots = counter if counter is not None else lengths  # a valid pointer, never written
        out, lse = _launch(
            _forward, q, k, v, windows, lengths, scale, slots, count_tiles, blocks=blocks
        )
        ctx.save_for_backward(q, k, v, out, lse, windows, lengths)
        ctx.scale = scale
        ctx.counter = counter
        ctx.blocks = blocks
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse, windows, lengths = ctx.saved_tensors
        counter = ctx.counter
        slots = counter if counter is not None else lengths
        dq, dk, dv = _launch(
            _backward,
            q,
            k,
            v,
            out,
            lse,
            grad_out,
            windows,
            lengths,
            ctx.scale,
            slots,
            counter is not None,
            blocks=ctx.blocks,
        )
        return dq, dk, dv, None, None, None, None, None


def group_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
    *,
    tile_counter: torch.Tensor | None = None,
    blocks: BlockSizes | None = None,
) -> torch.Tensor:
    """The fused kernel, differentiable in q, k and v. Inputs are assumed validated.

    ``windows``: ``[H]`` and ``lengths``: ``[B]`` integer tensors (any device; moved to q's).
    ``tile_counter``: optional int32 tensor of ``TILE_COUNTER_SLOTS`` elements on q's device;
    the kernels add the number of KV/Q tiles they visit (forward, backward dK/dV, backward dQ)
    to its slots. ``blocks`` overrides the tile sizes (``default_block_sizes``).
    """
    batch, heads, seq_len, head_dim = q.shape
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"q: head size {head_dim} > {MAX_HEAD_DIM}")
    if tile_counter is not None and (
        tile_counter.dtype != torch.int32
        or tile_counter.numel() < TILE_COUNTER_SLOTS
        or tile_counter.device != q.device
        or not tile_counter.is_contiguous()
    ):
        raise ValueError(
            f"tile_counter: expected a contiguous int32 tensor of {TILE_COUNTER_SLOTS} elements "
            "on q's device"
        )
    scale = head_dim**-0.5 if scale is None else float(scale)
    blocks = default_block_sizes(q.dtype, head_dim) if blocks is None else blocks
    if batch * heads * seq_len == 0:
        # Nothing to launch; keep the graph connected so that backward yields zero gradients.
        return q * 0.0
    win = windows.to(device=q.device, dtype=torch.int32)
    lens = lengths.to(device=q.device, dtype=torch.int32)
    return _GroupAttentionFunction.apply(q, k, v, win, lens, scale, tile_counter, blocks)
