"""Benchmark the fused group-attention kernel against its anchors (DESIGN §5).

Compares, forward and forward+backward, on one GPU:

- ``triton``: the fused block-sparse kernel (``amnet.kernels.group_attention_triton``),
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with a dense boolean mask,
- ``flex``: ``torch.nn.attention.flex_attention`` (under ``torch.compile``) with a block mask,
- ``reference``: the PyTorch reference in its dense form (materialises the full score matrix),
- ``banded``: the PyTorch reference as the model calls it (a list of windows): global heads
  dense, windowed heads on their band only (the CPU and ONNX path).

Shapes follow AMNet's group attention: B videos, half the heads global (window 0) and half
windowed (window 19), Dh 64, the second video shorter than T. Each method's peak memory counts
everything it allocates beyond q, k, v and the output gradient, including its mask (the dense
boolean mask for sdpa, the block mask for flex). A method that runs out of memory is recorded as
"OOM" and the run goes on.

    python benchmarks/bench_attention.py --out results/          # on a GPU
    python benchmarks/bench_attention.py --allow-cpu --out /tmp/b  # tiny smoke run on a CPU
    python benchmarks/bench_attention.py --allow-cpu --methods reference banded \
        --dtypes fp32 --seq-lens 2304 4608 --out results/   # the CPU path: dense vs band

Writes ``attention_bench.json`` and ``attention_bench.md`` to ``--out`` (rewritten after every
measurement, so an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

METHODS = ("triton", "sdpa", "flex", "reference", "banded")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
GPU_SEQ_LENS = (2304, 4608, 12551)
CPU_SEQ_LENS = (32, 47)

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON and markdown")
    p.add_argument("--seq-lens", type=int, nargs="+", default=None)
    p.add_argument("--dtypes", nargs="+", default=["fp16"], choices=sorted(DTYPES))
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=METHODS,
        help="default: all on a GPU; all but flex (no CPU backward) on a CPU",
    )
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--global-heads", type=int, default=4)
    p.add_argument("--window-heads", type=int, default=4)
    p.add_argument("--window", type=int, default=19)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument(
        "--short-fraction",
        type=float,
        default=0.75,
        help="length of the second and later videos as a fraction of T (1 = no padding)",
    )
    p.add_argument("--rep-ms", type=float, default=200.0, help="timed time per measurement")
    p.add_argument("--allow-cpu", action="store_true", help="tiny sizes on a CPU (smoke test)")
    return p.parse_args(argv)


def _oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Bench:
    """Timing and peak memory on one device."""

    def __init__(self, device: torch.device, rep_ms: float) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.rep_ms = rep_ms

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_ms(self, fn: Callable[[], object], grads: list[torch.Tensor]) -> float:
        """Median milliseconds of ``fn`` after warm-up (which also triggers compilation)."""
        for _ in range(2 if self.cuda else 0):
            fn()
        self.sync()
        t0 = time.perf_counter()
        fn()
        self.sync()
        once = max(time.perf_counter() - t0, 1e-6) * 1e3
        reps = int(min(max(self.rep_ms / once, 3 if self.cuda else 1), 200))
        times = []
        for _ in range(reps):
            for g in grads:
                g.grad = None
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def reset_peak(self) -> int:
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak_mib(self, base: int) -> float | None:
        if not self.cuda:
            return None
        self.sync()
        return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20


def _setup(
    method: str, windows: list[int], lengths: torch.Tensor, t: int, scale: float
) -> tuple[Fn, Any]:
    """The method's callable and whatever it holds (mask, block mask), built once per shape."""
    from amnet.kernels import group_attention_reference, visibility_mask

    device = lengths.device
    win = torch.tensor(windows, device=device)
    if method == "triton":
        from amnet.kernels.group_attention_triton import group_attention_triton

        # The kernel entry itself: the public wrapper adds input checks and one host sync.
        return lambda q, k, v: group_attention_triton(q, k, v, win, lengths, scale), None
    if method == "reference":
        return lambda q, k, v: group_attention_reference(q, k, v, win, lengths, scale), None
    if method == "banded":
        return lambda q, k, v: group_attention_reference(q, k, v, windows, lengths, scale), None
    if method == "sdpa":
        import torch.nn.functional as F

        mask = visibility_mask(win, lengths, t, t)
        return (
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        ), mask
    if method == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def mask_mod(b: torch.Tensor, h: torch.Tensor, qi: torch.Tensor, kj: torch.Tensor):  # type: ignore[no-untyped-def]
            w = win[h]
            near = (qi - kj).abs() <= torch.div(w, 2, rounding_mode="floor")
            return (near | (w == 0)) & (qi < lengths[b]) & (kj < lengths[b])

        batch, heads = lengths.shape[0], len(windows)
        try:
            # Compiled, so that building the block mask never materialises [B, H, T, T].
            block_mask = torch.compile(create_block_mask)(
                mask_mod, batch, heads, t, t, device=device
            )
        except Exception as exc:
            if _oom(exc):
                raise
            print(f"compiled create_block_mask failed ({type(exc).__name__}); building eagerly")
            block_mask = create_block_mask(mask_mod, batch, heads, t, t, device=device)
        compiled = torch.compile(flex_attention, dynamic=False)
        return lambda q, k, v: compiled(q, k, v, block_mask=block_mask, scale=scale), block_mask
    raise ValueError(f"unknown method {method}")


def _measure(
    bench: Bench,
    method: str,
    qkv: list[torch.Tensor],
    grad_out: torch.Tensor,
    windows: list[int],
    lengths: torch.Tensor,
    scale: float,
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Forward and forward+backward ms and peak MiB of one method; "OOM" where it ran out."""
    t = qkv[0].shape[2]
    rec: dict[str, Any] = {}
    out: torch.Tensor | None = None
    holder: Any = None
    try:
        base = bench.reset_peak()
        t0 = time.perf_counter()
        fn, holder = _setup(method, windows, lengths, t, scale)
        bench.sync()
        rec["setup_ms"] = (time.perf_counter() - t0) * 1e3
        with torch.no_grad():
            result = fn(*qkv)
        rec["fwd_peak_mib"] = bench.peak_mib(base)
        # Kept on the host for the parity check, so that it weighs on no later peak.
        out = result.float().cpu()
        del result
        with torch.no_grad():
            rec["fwd_ms"] = bench.time_ms(lambda: fn(*qkv), [])

        def step() -> None:
            fn(*qkv).backward(grad_out)

        bench.reset_peak()  # peaks stay relative to the first base: the mask counts in both
        step()
        rec["fwd_bwd_peak_mib"] = bench.peak_mib(base)
        rec["fwd_bwd_ms"] = bench.time_ms(step, qkv)
    except Exception as exc:
        if not _oom(exc):
            rec["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        for key in ("fwd_ms", "fwd_peak_mib", "fwd_bwd_ms", "fwd_bwd_peak_mib"):
            rec.setdefault(key, "OOM" if _oom(exc) else None)
    finally:
        del holder
        for x in qkv:
            x.grad = None
        if bench.cuda:
            torch.cuda.empty_cache()
    return rec, out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    cfg = report["config"]
    lines = [
        "# Group attention benchmark",
        "",
        f"Device: {env['device']}; torch {env['torch']}; triton {env['triton']}.",
        f"B={cfg['batch']}, heads: {cfg['global_heads']} global + {cfg['window_heads']} with "
        f"window {cfg['window']}, Dh={cfg['head_dim']}, lengths = [T, "
        f"{cfg['short_fraction']}·T]. Times: median ms; memory: peak MiB beyond the inputs, "
        f"masks included. Ratio: method time / {cfg['methods'][0]} time (> 1: "
        f"{cfg['methods'][0]} is faster).",
        "",
    ]
    methods = cfg["methods"]
    first = methods[0]  # the baseline of the ratios: triton when it ran
    head = ["dtype", "T", "pass"]
    for m in methods:
        head += [f"{m} ms", f"{m} MiB"]
    head += [f"{m}/{first}" for m in methods if m != first]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report["results"]:
        for pass_name, key in (("fwd", "fwd"), ("fwd+bwd", "fwd_bwd")):
            cells = [row["dtype"], str(row["T"]), pass_name]
            for m in methods:
                rec = row["methods"].get(m, {})
                cells += [_fmt(rec.get(f"{key}_ms"), 3), _fmt(rec.get(f"{key}_peak_mib"), 0)]
            base = row["methods"].get(first, {}).get(f"{key}_ms")
            for m in methods:
                if m == first:
                    continue
                other = row["methods"].get(m, {}).get(f"{key}_ms")
                ok = isinstance(base, float) and isinstance(other, float)
                cells.append(f"{other / base:.2f}x" if ok else _fmt(other))
            lines.append("| " + " | ".join(cells) + " |")
    errors = [
        f"- {row['dtype']} T={row['T']} {m}: {rec['error']}"
        for row in report["results"]
        for m, rec in row["methods"].items()
        if rec.get("error")
    ]
    diffs = [
        f"- {row['dtype']} T={row['T']} {m}: {rec['max_abs_diff_vs_first']:.2e}"
        for row in report["results"]
        for m, rec in row["methods"].items()
        if isinstance(rec.get("max_abs_diff_vs_first"), float)
    ]
    if diffs:
        lines += ["", f"Forward max |difference| from {first} on valid rows:", *diffs]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"


def _write(out_dir: Path, report: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "attention_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "attention_bench.md").write_text(_markdown(report))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("bench_attention: no CUDA device; use --allow-cpu for a tiny CPU smoke run")
        return 2
    if not cuda:
        # The kernels run through the Triton interpreter on a CPU; it must be on before import.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import triton

    device = torch.device("cuda" if cuda else "cpu")
    seq_lens = args.seq_lens or (GPU_SEQ_LENS if cuda else CPU_SEQ_LENS)
    methods = args.methods or [m for m in METHODS if cuda or m != "flex"]
    windows = [0] * args.global_heads + [args.window] * args.window_heads
    heads, d = len(windows), args.head_dim
    scale = d**-0.5
    # Under the Triton interpreter one call is slow enough; the PyTorch paths are timed properly.
    bench = Bench(device, args.rep_ms if cuda or "triton" not in methods else 0.0)
    report: dict[str, Any] = {
        "env": {
            "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
            "torch": torch.__version__,
            "triton": triton.__version__,
            "python": platform.python_version(),
        },
        "config": {
            "batch": args.batch,
            "global_heads": args.global_heads,
            "window_heads": args.window_heads,
            "window": args.window,
            "head_dim": d,
            "short_fraction": args.short_fraction,
            "methods": methods,
            "dtypes": list(args.dtypes),
            "seq_lens": list(seq_lens),
        },
        "results": [],
    }
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for t in seq_lens:
            gen = torch.Generator(device=device).manual_seed(t)
            shape = (args.batch, heads, t, d)
            qkv = [
                torch.randn(shape, device=device, generator=gen, dtype=dtype).requires_grad_()
                for _ in range(3)
            ]
            grad_out = torch.randn(shape, device=device, generator=gen, dtype=dtype)
            short = max(1, math.floor(args.short_fraction * t))
            lengths = torch.tensor([t] + [short] * (args.batch - 1), device=device)
            valid = (torch.arange(t) < lengths.cpu().view(-1, 1)).view(-1, 1, t, 1)
            row: dict[str, Any] = {"dtype": dtype_name, "T": t, "methods": {}}
            report["results"].append(row)
            reference_out: torch.Tensor | None = None
            for method in methods:
                rec, out = _measure(bench, method, qkv, grad_out, windows, lengths, scale)
                if out is not None:
                    out = torch.where(valid, out, 0.0)
                    if method == methods[0]:  # the ratios' baseline is also the diffs'
                        reference_out = out
                    elif reference_out is not None:
                        diff = (out - reference_out).abs().max().item()
                        rec["max_abs_diff_vs_first"] = diff
                    del out
                row["methods"][method] = rec
                summary = ", ".join(f"{k}={_fmt(v, 3)}" for k, v in rec.items() if k != "error")
                print(f"{dtype_name} T={t} {method}: {summary} {rec.get('error', '')}", flush=True)
                _write(args.out, report)
            del qkv, grad_out, reference_out
    _write(args.out, report)
    print(f"wrote {args.out / 'attention_bench.json'} and {args.out / 'attention_bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
