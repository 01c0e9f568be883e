"""Tile sizes of the fused group-attention kernel, measured side by side on one GPU.

For each candidate :class:`~amnet.kernels.group_attention_triton.BlockSizes` it checks the
output and the three gradients against the PyTorch reference (fp32, on the first ``--seq-lens``
entry) and times the forward and forward+backward passes at every ``--seq-lens``, next to
``scaled_dot_product_attention`` with a dense boolean mask measured in the same run. The shapes
are ``benchmarks/bench_attention.py``'s: B 2, 4 global + 4 window-19 heads, Dh 64, lengths
``[T, 0.75 T]``. The kernel's defaults (``default_block_sizes``) are chosen from this table.

    python benchmarks/tune_attention_blocks.py --out results/        # on a GPU

Writes ``attention_tuning.json`` and ``attention_tuning.md`` to ``--out`` after every
measurement, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attention import DTYPES, Bench

# fwd_m, fwd_n, bwd_m, bwd_n, num_warps, fwd_stages, bwd_stages, dq_m, dq_n
CANDIDATES = [
    (128, 64, 64, 64, 8, 3, 2, 64, 64),
    (128, 64, 32, 128, 8, 3, 2, 128, 32),
    (128, 64, 32, 128, 4, 3, 2, 128, 32),
    (128, 64, 64, 128, 8, 3, 2, 128, 64),
    (128, 64, 32, 64, 4, 3, 2, 64, 32),
    (64, 64, 32, 64, 4, 3, 2, 64, 32),
    (128, 64, 32, 128, 8, 3, 3, 128, 32),
    (128, 64, 64, 64, 4, 3, 2, 64, 64),
    (128, 64, 16, 128, 4, 3, 2, 128, 16),
    (128, 64, 32, 128, 8, 3, 1, 128, 32),
    (64, 64, 32, 128, 4, 3, 2, 128, 32),
    (128, 128, 32, 128, 8, 3, 2, 128, 32),
]


class _Fallbacks(logging.Handler):
    """Counts the kernel's retries with halved tiles (a candidate that does not fit)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "retrying" in record.getMessage()


def _blocks(spec: tuple[int, ...]) -> Any:
    from amnet.kernels.group_attention_triton import BlockSizes

    fm, fn, bm, bn, warps, fs, bs, qm, qn = spec
    return BlockSizes(fm, fn, bm, bn, num_warps=warps, fwd_stages=fs, bwd_stages=bs, dq_m=qm, dq_n=qn)  # fmt: skip


def _inputs(t: int, dtype: torch.dtype, device: torch.device, batch: int = 2, heads: int = 8):
    gen = torch.Generator(device=device).manual_seed(t)
    shape = (batch, heads, t, 64)
    qkv = [torch.randn(shape, device=device, generator=gen, dtype=dtype) for _ in range(3)]
    grad = torch.randn(shape, device=device, generator=gen, dtype=dtype)
    lengths = torch.tensor([t] + [math.floor(0.75 * t)] * (batch - 1), device=device)
    return qkv, grad, lengths


def _errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> dict[str, float]:
    """Max |difference| / max(max |reference|, 1) per tensor (out, dq, dk, dv)."""
    return {
        name: (a.float() - r).abs().max().item() / max(r.abs().max().item(), 1.0)
        for name, a, r in zip(("out", "dq", "dk", "dv"), got, want, strict=True)
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Group attention tile sizes",
        "",
        f"Device: {report['device']}; torch {report['torch']}; triton {report['triton']}. "
        "Times: median ms; ratio: sdpa (dense mask) time / kernel time, same run.",
        "",
        "| blocks (fwd m×n, dkdv m×n, dq m×n, warps, stages f/b) | dtype | T | fwd ms | "
        "fwd+bwd ms | sdpa fwd ÷ | sdpa fwd+bwd ÷ | max error | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        b = row["blocks"]
        name = (
            f"{b['fwd_m']}×{b['fwd_n']}, {b['bwd_m']}×{b['bwd_n']}, {b['dq_m']}×{b['dq_n']}, "
            f"{b['num_warps']}, {b['fwd_stages']}/{b['bwd_stages']}"
        )
        sdpa = report["sdpa"].get(f"{row['dtype']}/{row['T']}", {})
        fwd, both = row.get("fwd_ms"), row.get("fwd_bwd_ms")
        r1 = f"{sdpa['fwd_ms'] / fwd:.2f}" if fwd and sdpa.get("fwd_ms") else "–"
        r2 = f"{sdpa['fwd_bwd_ms'] / both:.2f}" if both and sdpa.get("fwd_bwd_ms") else "–"
        err = max(row["errors"].values()) if row.get("errors") else None
        lines.append(
            f"| {name} | {row['dtype']} | {row['T']} | {fwd or '–'} | {both or '–'} | {r1} | "
            f"{r2} | {'–' if err is None else f'{err:.1e}'} | {row.get('note', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[2304, 12551])
    p.add_argument("--dtypes", nargs="+", default=["fp16"], choices=sorted(DTYPES))
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--allow-cpu", action="store_true", help="smoke run under the interpreter")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("tune_attention_blocks: needs a CUDA GPU (--allow-cpu: smoke run)")
        return 2
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    device = torch.device("cuda" if cuda else "cpu")
    import torch.nn.functional as F
    import triton

    from amnet.kernels import group_attention_reference, visibility_mask
    from amnet.kernels.group_attention_triton import group_attention_triton

    fallbacks = _Fallbacks()
    logging.getLogger("amnet").addHandler(fallbacks)
    bench = Bench(device, args.rep_ms if cuda else 0.0)
    windows = [0] * 4 + [19] * 4
    win = torch.tensor(windows, device=device)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (interpreter)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "sdpa": {},
        "results": [],
    }
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        (out_dir / "attention_tuning.json").write_text(json.dumps(report, indent=1) + "\n")
        (out_dir / "attention_tuning.md").write_text(_markdown(report))

    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for index, t in enumerate(args.seq_lens):
            qkv, grad, lengths = _inputs(t, dtype, device)
            scale = qkv[0].shape[-1] ** -0.5
            want = None
            if index == 0:  # parity on the first length (the reference is dense and slow)
                ref_in = [x.float().requires_grad_() for x in qkv]
                ref = group_attention_reference(*ref_in, windows, lengths, scale)
                want = [ref.detach(), *torch.autograd.grad(ref, ref_in, grad.float())]
                del ref, ref_in
            mask = visibility_mask(win, lengths, t, t)
            leaves = [x.detach().requires_grad_() for x in qkv]

            def sdpa(leaves=leaves, mask=mask, scale=scale):
                return F.scaled_dot_product_attention(*leaves, attn_mask=mask, scale=scale)

            with torch.no_grad():
                sdpa_fwd = bench.time_ms(sdpa, [])
            sdpa_both = bench.time_ms(lambda g=grad: sdpa().backward(g), leaves)
            report["sdpa"][f"{dtype_name}/{t}"] = {"fwd_ms": sdpa_fwd, "fwd_bwd_ms": sdpa_both}
            del mask
            if cuda:
                torch.cuda.empty_cache()
            for spec in CANDIDATES:
                blocks = _blocks(spec)
                row: dict[str, Any] = {
                    "blocks": dataclasses.asdict(blocks), "dtype": dtype_name, "T": t,
                }  # fmt: skip
                before = fallbacks.count

                def kernel(leaves=leaves, lengths=lengths, blocks=blocks, scale=scale):
                    return group_attention_triton(*leaves, win, lengths, scale, blocks=blocks)

                try:
                    if want is not None:
                        out = kernel()
                        got = [out.detach(), *torch.autograd.grad(out, leaves, grad)]
                        row["errors"] = _errors(got, want)
                        del out, got
                    with torch.no_grad():
                        row["fwd_ms"] = round(bench.time_ms(kernel, []), 4)
                    row["fwd_bwd_ms"] = round(
                        bench.time_ms(lambda k=kernel, g=grad: k().backward(g), leaves), 4
                    )
                except Exception as exc:  # a candidate that fails is recorded, the rest go on
                    row["note"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                if fallbacks.count > before:
                    row["note"] = (row.get("note", "") + " fell back to halved tiles").strip()
                report["results"].append(row)
                print(json.dumps(row), flush=True)
                write()
            del qkv, grad, leaves, want
            if cuda:
                torch.cuda.empty_cache()
    write()
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
