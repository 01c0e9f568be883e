"""The fused group-attention kernel against its PyTorch reference (DESIGN §5).

Without a GPU the Triton kernels run through the Triton interpreter (conftest sets
TRITON_INTERPRET=1 before triton is imported), with 16-wide tiles so that short sequences still
span several tiles. The tests marked for CUDA run the compiled kernels and need
TRITON_INTERPRET=0 (see scripts/gpu_check.sh).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable

import pytest
import torch

import amnet.kernels as kernels
from amnet.kernels import (
    attention_backend,
    group_attention,
    group_attention_reference,
    reference,
    visibility_mask,
)

triton = pytest.importorskip("triton")
gat = pytest.importorskip("amnet.kernels.group_attention_triton")

INTERPRETING = gat.interpreting()
needs_interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="CPU kernel tests need TRITON_INTERPRET=1 before triton is imported"
)
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or INTERPRETING,
    reason="needs a CUDA device and compiled (not interpreted) Triton kernels",
)
has_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SMALL = gat.BlockSizes(16, 16, 16, 16)


def _inputs(
    b: int, h: int, t: int, d: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(b * 1000003 + h * 1009 + t * 31 + d)
    q, k, v = (torch.randn(b, h, t, d, generator=gen).to(device, dtype) for _ in range(3))
    return q, k, v


def _run_both(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: list[int],
    lengths: torch.Tensor,
    scale: float | None = None,
    blocks: gat.BlockSizes | None = SMALL,
    grad_out: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Output and dQ, dK, dV of the kernel and of the reference (on fp32 copies)."""
    win = torch.tensor(windows)
    qk = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = gat.group_attention_triton(*qk, win, lengths, scale, blocks=blocks)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.device)
    g = g if grad_out is None else grad_out
    grads = torch.autograd.grad(out, qk, g.to(out.dtype))
    qr = [x.detach().float().clone().requires_grad_() for x in (q, k, v)]
    ref = group_attention_reference(*qr, win.to(q.device), lengths.to(q.device), scale)
    ref_grads = torch.autograd.grad(ref, qr, g.float())
    return [out, *grads], [ref, *ref_grads]


def _assert_close(got: list[torch.Tensor], want: list[torch.Tensor], atol: float) -> None:
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        err = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
        assert err <= atol, f"{name}: max abs error {err:.3g} > {atol}"


# B, H, T, Dh, windows (one per head), lengths
CASES = [
    (1, 1, 1, 16, [0], [1]),
    (1, 2, 1, 32, [0, 5], [0]),
    (2, 4, 7, 16, [0, 1, 5, 19], [7, 3]),
    (1, 3, 16, 64, [19, 0, 1], [16]),
    (2, 8, 97, 32, [0, 1, 5, 19, 0, 1, 5, 19], [97, 50]),
    (3, 2, 131, 16, [5, 0], [131, 0, 17]),
    (1, 4, 161, 64, [0, 19, 5, 1], [150]),
    (2, 2, 161, 16, [19, 0], [161, 81]),
    (3, 1, 40, 32, [3], [40, 39, 1]),
    # Half-windows of 16 and 1 put band edges exactly on 16-wide tile boundaries.
    (2, 4, 100, 32, [2, 17, 32, 33], [100, 64]),
]


@needs_interpreter
@pytest.mark.parametrize(("b", "h", "t", "d", "windows", "lengths"), CASES)
def test_forward_and_grads_match_reference(
    b: int, h: int, t: int, d: int, windows: list[int], lengths: list[int]
) -> None:
    q, k, v = _inputs(b, h, t, d)
    got, want = _run_both(q, k, v, windows, torch.tensor(lengths))
    _assert_close(got, want, atol=1e-4)


@needs_interpreter
def test_explicit_scale_and_odd_head_size() -> None:
    # Dh = 24 pads to a 32-wide tile; the padding must not leak into the result.
    q, k, v = _inputs(2, 2, 45, 24)
    got, want = _run_both(q, k, v, [0, 7], torch.tensor([45, 30]), scale=0.37)
    _assert_close(got, want, atol=1e-4)


@needs_interpreter
def test_larger_tiles_and_default_blocks() -> None:
    q, k, v = _inputs(1, 2, 150, 32)
    got, want = _run_both(
        q, k, v, [0, 19], torch.tensor([140]), blocks=gat.BlockSizes(32, 16, 16, 32)
    )
    _assert_close(got, want, atol=1e-4)
    got, want = _run_both(q, k, v, [0, 19], torch.tensor([140]), blocks=None)
    _assert_close(got, want, atol=1e-4)
    # dQ with tiles of its own.
    blocks = gat.BlockSizes(16, 16, 16, 32, dq_m=32, dq_n=16)
    got, want = _run_both(q, k, v, [0, 19], torch.tensor([140]), blocks=blocks)
    _assert_close(got, want, atol=1e-4)


@needs_interpreter
def test_non_contiguous_inputs() -> None:
    b, h, t, d = 2, 3, 53, 32
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(b, t, h, d, generator=gen).transpose(1, 2)  # [B, T, H, Dh] layout
    k = torch.randn(b, h, t, 2 * d, generator=gen)[..., ::2]  # strided head dimension
    v = torch.randn(b, h, t + 9, d, generator=gen)[:, :, 4 : 4 + t]  # a window of a longer clip
    g = torch.randn(b, t, h, d, generator=gen).transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous() or g.is_contiguous())
    got, want = _run_both(q, k, v, [0, 5, 19], torch.tensor([53, 20]), grad_out=g)
    _assert_close(got, want, atol=1e-4)


@needs_interpreter
def test_rows_without_visible_keys_are_zero_with_zero_grads() -> None:
    b, h, t, d = 3, 2, 37, 16
    q, k, v = _inputs(b, h, t, d)
    # Poison everything at or past each length: it must neither be read into valid rows nor
    # turn padded rows into NaN.
    lengths = torch.tensor([0, 9, 37])
    for i, n in enumerate(lengths.tolist()):
        for x in (q, k, v):
            x[i, :, n:] = float("nan") if i == 1 else 1e4
    got, want = _run_both(q.nan_to_num(0.0), k.nan_to_num(0.0), v.nan_to_num(0.0), [0, 1], lengths)
    _assert_close(got, want, atol=1e-4)

    qs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = gat.group_attention_triton(*qs, torch.tensor([0, 1]), lengths, blocks=SMALL)
    out.sum().backward()
    for i, n in enumerate(lengths.tolist()):
        assert torch.equal(out[i, :, n:], torch.zeros_like(out[i, :, n:]))
        assert torch.isfinite(out[i, :, :n]).all()
        for x in qs:
            assert x.grad is not None
            tail = x.grad[i, :, n:]
            assert torch.equal(tail.nan_to_num(1.0), torch.zeros_like(tail))
            assert torch.isfinite(x.grad[i, :, :n]).all()


def _expected_tiles(
    windows: list[int], lengths: torch.Tensor, t: int, block_q: int, block_k: int
) -> tuple[int, int]:
    """(tile pairs holding at least one visible pair, all tile pairs), from the reference mask."""
    mask = visibility_mask(torch.tensor(windows), lengths, t, t)
    nq, nk = -(-t // block_q), -(-t // block_k)
    padded = torch.zeros(mask.shape[0], mask.shape[1], nq * block_q, nk * block_k, dtype=torch.bool)
    padded[..., :t, :t] = mask
    tiles = padded.view(mask.shape[0], mask.shape[1], nq, block_q, nk, block_k).any(5).any(3)
    return int(tiles.sum()), tiles.numel()


@needs_interpreter
@pytest.mark.parametrize(
    ("windows", "lengths", "t", "blocks"),
    [
        ([5], [1024], 1024, SMALL),  # a short window over a long clip: a band of tiles
        ([19, 1], [358, 512], 512, gat.BlockSizes(16, 32, 32, 16)),
        # dQ with its own tiles (a large query tile, small key tiles), unlike dK/dV's.
        ([19, 5], [512, 153], 512, gat.BlockSizes(16, 16, 16, 64, dq_m=64, dq_n=16)),
        ([0], [100, 0], 512, SMALL),  # a global head: nothing past the length
    ],
)
def test_only_visible_tiles_are_visited(
    windows: list[int], lengths: list[int], t: int, blocks: gat.BlockSizes
) -> None:
    b, h, d = len(lengths), len(windows), 16
    q, k, v = (x.requires_grad_() for x in _inputs(b, h, t, d))
    lens = torch.tensor(lengths)
    counter = torch.zeros(gat.TILE_COUNTER_SLOTS, dtype=torch.int32)
    out = gat.group_attention_triton(
        q, k, v, torch.tensor(windows), lens, tile_counter=counter, blocks=blocks
    )
    out.sum().backward()
    fwd, dense = _expected_tiles(windows, lens, t, blocks.fwd_m, blocks.fwd_n)
    bwd, bwd_dense = _expected_tiles(windows, lens, t, blocks.bwd_m, blocks.bwd_n)
    dq, dq_dense = _expected_tiles(windows, lens, t, blocks.dq_m, blocks.dq_n)
    assert counter.tolist() == [fwd, bwd, dq]
    # The block-sparse loop visits a small fraction of the dense tile grid.
    assert fwd * 8 < dense and bwd * 8 < bwd_dense and dq * 8 < dq_dense
    if windows == [0]:
        # Global head, length 100 of 512 with 16-wide tiles: 7 x 7 tiles, none for length 0.
        assert fwd == 49


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_interpreted(dtype: torch.dtype) -> None:
    probe = torch.eye(16, dtype=dtype)
    try:
        out = gat.group_attention_triton(
            probe.view(1, 1, 16, 16), probe.view(1, 1, 16, 16), probe.view(1, 1, 16, 16),
            torch.tensor([0]), torch.tensor([16]), blocks=SMALL,
        )  # fmt: skip
    except Exception as exc:  # the interpreter's support for 16-bit types varies by version
        pytest.skip(f"interpreter cannot run {dtype}: {exc}")
    want = group_attention_reference(
        *(probe.view(1, 1, 16, 16).float(),) * 3, torch.tensor([0]), torch.tensor([16])
    )
    if not torch.allclose(out.float(), want, atol=1e-2):
        pytest.skip(f"this Triton interpreter computes {dtype} dot products incorrectly")
    q, k, v = _inputs(2, 4, 61, 32, dtype)
    lengths = torch.tensor([61, 30])
    windows = [0, 1, 5, 19]
    out = gat.group_attention_triton(q, k, v, torch.tensor(windows), lengths, blocks=SMALL)
    ref = group_attention_reference(q.float(), k.float(), v.float(), torch.tensor(windows), lengths)
    assert out.dtype == dtype
    tol = 5e-3 if dtype == torch.float16 else 3e-2
    assert (out.float() - ref).abs().max().item() <= tol


# --- validation -------------------------------------------------------------------------------

Bad = Callable[[], tuple]


def _good() -> tuple:
    q, k, v = _inputs(2, 3, 10, 16)
    return q, k, v, [0, 1, 5], torch.tensor([10, 4])


def _replace(i: int, value: object) -> Bad:
    def make() -> tuple:
        args = list(_good())
        args[i] = value(args) if callable(value) else value
        return tuple(args)

    return make


BAD_INPUTS: list[tuple[str, Bad, str]] = [
    ("int dtype", _replace(0, lambda a: a[0].to(torch.int32)), "q"),
    ("float64", _replace(2, lambda a: a[2].double()), "v"),
    ("q not 4-D", _replace(0, lambda a: a[0][0]), "q"),
    ("k shape", _replace(1, lambda a: a[1][:, :, :9]), "k"),
    ("v dtype", _replace(2, lambda a: a[2].half()), "v"),
    ("k device", _replace(1, lambda a: a[1].to("meta")), "k"),
    (
        "head size 0",
        lambda: (*(torch.zeros(2, 3, 10, 0),) * 3, [0, 1, 5], torch.tensor([10, 4])),
        "q",
    ),
    ("windows length", _replace(3, [0, 1]), "windows"),
    ("windows negative", _replace(3, [0, -1, 5]), "windows"),
    ("windows 2-D tensor", _replace(3, torch.zeros(1, 3, dtype=torch.int64)), "windows"),
    ("lengths shape", _replace(4, torch.tensor([10, 4, 3])), "lengths"),
    ("lengths scalar", _replace(4, torch.tensor(10)), "lengths"),
    ("lengths float", _replace(4, torch.tensor([10.0, 4.0])), "lengths"),
    ("lengths > T", _replace(4, torch.tensor([11, 4])), "lengths"),
    ("lengths negative", _replace(4, torch.tensor([10, -1])), "lengths"),
]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize(("case", "make", "arg"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_value_error(
    monkeypatch: pytest.MonkeyPatch, backend: str, case: str, make: Bad, arg: str
) -> None:
    monkeypatch.setenv(kernels.BACKEND_ENV, backend)
    q, k, v, windows, lengths = make()
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        group_attention(q, k, v, windows, lengths)


def test_good_inputs_pass_validation() -> None:
    out = group_attention(*_good())
    assert out.shape == (2, 3, 10, 16)


# --- dispatch ---------------------------------------------------------------------------------


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    assert attention_backend(torch.device("cpu")) == "reference"
    assert attention_backend("cuda") == "triton"  # triton is installed (importorskip above)
    monkeypatch.setenv(kernels.BACKEND_ENV, "triton")
    assert attention_backend("cpu") == "triton"
    monkeypatch.setenv(kernels.BACKEND_ENV, "reference")
    assert attention_backend("cuda:0") == "reference"
    monkeypatch.setenv(kernels.BACKEND_ENV, "auto")
    assert attention_backend("cpu") == "reference"
    monkeypatch.setenv(kernels.BACKEND_ENV, "cudnn")
    with pytest.raises(ValueError, match=kernels.BACKEND_ENV):
        attention_backend("cpu")


@needs_interpreter
@pytest.mark.parametrize("forced", ["", "reference", "triton"])
def test_env_var_picks_the_path(monkeypatch: pytest.MonkeyPatch, forced: str) -> None:
    calls: list[int] = []
    real = gat.group_attention_triton

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(gat, "group_attention_triton", spy)
    monkeypatch.setenv(kernels.BACKEND_ENV, forced)
    q, k, v, windows, lengths = _good()
    q.requires_grad_()
    out = group_attention(q, k, v, windows, lengths)
    out.sum().backward()
    assert len(calls) == (1 if forced == "triton" else 0)
    ref = group_attention_reference(q.detach(), k, v, torch.tensor(windows), lengths)
    assert torch.allclose(out, ref, atol=1e-5)
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_importing_kernels_does_not_import_triton() -> None:
    code = (
        "import sys, torch\n"
        "import amnet.kernels as K\n"
        "q = torch.randn(1, 2, 5, 16)\n"
        "K.group_attention(q, q, q, [0, 3], torch.tensor([4]))\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != kernels.BACKEND_ENV}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


# --- CUDA (compiled kernels; skipped on machines without a GPU) ---------------------------------

CUDA_TOL = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("b", "h", "t", "d", "windows", "lengths"),
    [
        (2, 8, 1, 64, [0, 0, 0, 0, 19, 19, 19, 19], [1, 0]),
        (2, 4, 257, 32, [0, 1, 5, 19], [257, 100]),
        (2, 8, 2304, 64, [0, 0, 0, 0, 19, 19, 19, 19], [2304, 1531]),
        (1, 4, 4099, 128, [0, 5, 19, 1], [4000]),
        (3, 2, 1000, 16, [0, 5], [1000, 0, 999]),
    ],
)
def test_cuda_parity(
    dtype: torch.dtype,
    b: int,
    h: int,
    t: int,
    d: int,
    windows: list[int],
    lengths: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(kernels.BACKEND_ENV, raising=False)
    assert attention_backend("cuda") == "triton"
    q, k, v = _inputs(b, h, t, d, dtype, "cuda")
    lens = torch.tensor(lengths, device="cuda")
    qs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = group_attention(*qs, windows, lens)  # the public path
    g = torch.randn(out.shape, device="cuda", dtype=dtype)
    grads = torch.autograd.grad(out, qs, g)
    qr = [x.float().requires_grad_() for x in (q, k, v)]
    ref = group_attention_reference(qr[0], qr[1], qr[2], torch.tensor(windows, device="cuda"), lens)
    ref_grads = torch.autograd.grad(ref, qr, g.float())
    for name, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=True):
        assert a.dtype == dtype
        assert torch.isfinite(a).all(), name
        # Error relative to the tensor's largest entry (gradients scale with T), absolute below
        # 1: with one visible key the exact dQ and dK are 0 and both sides return rounding noise.
        diff = (a.float() - r).abs().max().item()
        largest = r.abs().max().item()
        err = diff / max(largest, 1.0)
        assert err <= CUDA_TOL[dtype], (
            f"{name}: error {err:.3g} > {CUDA_TOL[dtype]} (max |diff| {diff:.3g}, max |ref| "
            f"{largest:.3g})"
        )


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_tile_skipping_and_layouts(dtype: torch.dtype) -> None:
    b, h, t, d = 2, 2, 4608, 64
    windows, lengths = [19, 0], torch.tensor([4608, 1000], device="cuda")
    blocks = gat.default_block_sizes(dtype, d)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, t, h, d, device="cuda", generator=gen).to(dtype).transpose(1, 2)
    k, v = (torch.randn(b, h, t, d, device="cuda", generator=gen).to(dtype) for _ in range(2))
    counter = torch.zeros(gat.TILE_COUNTER_SLOTS, dtype=torch.int32, device="cuda")
    qs = [x.detach().requires_grad_() for x in (q, k, v)]
    out = gat.group_attention_triton(
        *qs, torch.tensor(windows), lengths, tile_counter=counter, blocks=blocks
    )
    out.float().sum().backward()
    fwd, _ = _expected_tiles(windows, lengths.cpu(), t, blocks.fwd_m, blocks.fwd_n)
    bwd, _ = _expected_tiles(windows, lengths.cpu(), t, blocks.bwd_m, blocks.bwd_n)
    dq, _ = _expected_tiles(windows, lengths.cpu(), t, blocks.dq_m, blocks.dq_n)
    assert counter.tolist() == [fwd, bwd, dq]
    ref = group_attention_reference(
        q.float(), k.float(), v.float(), torch.tensor(windows, device="cuda"), lengths
    )
    err = (out.float() - ref).abs().max().item()
    assert err <= CUDA_TOL[dtype] * max(ref.abs().max().item(), 1.0)


@needs_cuda
def test_cuda_inference_mode() -> None:
    # Inference tensors have no version counter: the lengths check must not rely on one.
    q = torch.randn(2, 2, 40, 16, device="cuda")
    with torch.inference_mode():
        lengths = torch.tensor([40, 25], device="cuda")
        out = group_attention(q, q, q, [0, 5], lengths)
        again = group_attention(q, q, q, [0, 5], lengths)
        lengths.fill_(41)
        with pytest.raises(ValueError, match=r"^lengths:"):
            group_attention(q, q, q, [0, 5], lengths)
    assert torch.equal(out, again)


@needs_cuda
def test_cuda_lengths_range_rechecked_after_in_place_change() -> None:
    q = torch.zeros(1, 1, 8, 16, device="cuda")
    lengths = torch.tensor([8], device="cuda")
    group_attention(q, q, q, [0], lengths)
    group_attention(q, q, q, [0], lengths)  # the same tensor again: range check skipped
    lengths.fill_(9)  # an in-place change must be checked again
    with pytest.raises(ValueError, match=r"^lengths:"):
        group_attention(q, q, q, [0], lengths)


def test_wide_heads_take_the_reference_unless_triton_is_forced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = torch.randn(1, 2, 12, 160)
    lengths = torch.tensor([9])
    monkeypatch.delenv("AMNET_ATTENTION", raising=False)
    assert kernels.attention_backend("cuda", head_dim=160) == "reference"
    out = kernels.group_attention(q, q, q, [0, 5], lengths)
    expected = kernels.group_attention_reference(q, q, q, torch.tensor([0, 5]), lengths)
    assert torch.allclose(out, expected)
    monkeypatch.setenv("AMNET_ATTENTION", "triton")
    with pytest.raises(ValueError, match="q: head size 160 above"):
        kernels.group_attention(q, q, q, [0, 5], lengths)


@pytest.mark.parametrize(
    ("t", "windows"),
    [(300, [0, 0, 9, 9, 0, 0, 9, 9]), (37, [5, 0, 3, 0]), (5, [19, 0]), (1, [9, 9]), (64, [2, 1])],
)
@pytest.mark.parametrize(
    ("traced", "device"),
    [(False, "cpu"), (True, "cpu"), pytest.param(False, "cuda", marks=has_cuda)],
    ids=["eager", "traced", "eager-cuda"],
)
def test_the_band_equals_the_dense_form(t, windows, traced, device):
    """The model's reference path (windows as a list: windowed heads on their band only) gives
    the dense definition's outputs and gradients, for windows wider than the video, even
    windows, videos of length 0 and 1: run eagerly (the band one diagonal at a time, global
    heads through PyTorch's fused attention; on CPUs, and on GPUs without Triton) and traced as
    ONNX export traces it (the band gathered and global heads written out: two matrix products
    per run of heads)."""
    gen = torch.Generator().manual_seed(t)
    q, k, v = (
        torch.randn(3, len(windows), t, 16, generator=gen).to(device).requires_grad_()
        for _ in range(3)
    )
    lengths = torch.tensor([t, max(t // 2, 1), 0], device=device)

    def banded(q, k, v):
        return group_attention_reference(q, k, v, windows, lengths)

    if traced:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the trace's notes on Python ints it bakes in
            fn = torch.jit.trace(banded, (q, k, v), check_trace=False)
        runs = len(reference._runs(windows))
        assert str(fn.graph).count("aten::matmul") == 2 * runs
        band = fn(q, k, v)
    else:
        band = banded(q, k, v)
    dense = group_attention_reference(q, k, v, torch.tensor(windows), lengths)
    torch.testing.assert_close(band, dense, atol=1e-5, rtol=0)
    grads_band = torch.autograd.grad(band.square().sum(), (q, k, v))
    grads_dense = torch.autograd.grad(dense.square().sum(), (q, k, v))
    for a, b in zip(grads_band, grads_dense, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
