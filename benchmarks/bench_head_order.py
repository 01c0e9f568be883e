"""GAM's head order, side by side: heads grouped by window (the model's order: long self,
long→short, short self, short→long) against the four alternating sets (long self, short self,
long→short, short→long), which the reference attention takes as four runs instead of two.

    python benchmarks/bench_head_order.py [--threads 2] [--rounds 7] [--json]

Measured in one process, the orders interleaved step by step: a CPU training step (forward and
backward) of the tiny model (B 4, T 256) and of the paper-size model (B 2, T 288), whether
outputs and gradients are bit-identical, and the node count of each order's exported graph.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from amnet.config import load_config
from amnet.kernels import group_attention
from amnet.model import AMNet
from amnet.model.blocks import merge_heads, split_heads
from amnet.model.gam import GroupAttention

ROOT = Path(__file__).resolve().parents[1]


def _alternating(self: GroupAttention, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """GroupAttention.forward with the four head sets alternating between the two windows."""
    long_x, short_x = x.split(self.half_dim, dim=-1)
    hh, window, dh = self.half_heads, self.windows[-1], self.half_dim // self.half_heads
    ql, kl, vl = (split_heads(t, hh, dh) for t in self.qkv_long(long_x).split(self.half_dim, -1))
    qs, ks, vs = (split_heads(t, hh, dh) for t in self.qkv_short(short_x).split(self.half_dim, -1))
    windows = [0] * hh + [window] * hh + [0] * hh + [window] * hh
    q, k, v = (torch.cat(parts, dim=1) for parts in ([ql, qs, ql, qs], [kl, ks, ks, kl], [vl, vs, vs, vl]))  # fmt: skip
    long_self, short_self, long_cross, short_cross = group_attention(
        q, k, v, windows, lengths, self.scale
    ).split(hh, dim=1)
    out = torch.cat([merge_heads(long_self + long_cross), merge_heads(short_self + short_cross)], -1)  # fmt: skip
    return self.drop(self.proj(out))


ORDERS = {"alternating": _alternating, "grouped": GroupAttention.forward}


def _use(order: str) -> None:
    GroupAttention.forward = ORDERS[order]


def training_rows(rounds: int) -> list[dict]:
    rows = []
    for config, b, t in (("tiny_cpu", 4, 256), ("thumos14_i3d", 2, 288)):
        cfg = load_config(ROOT / "configs" / f"{config}.yaml")
        torch.manual_seed(0)
        model = AMNet.from_config(cfg).train()
        x = torch.rand(b, t, cfg["dataset"]["input_dim"])
        lengths = torch.tensor([t] * b)
        times: dict[str, list[float]] = {o: [] for o in ORDERS}
        results = {}
        for _ in range(rounds + 1):  # the first round warms up
            for order in ORDERS:
                _use(order)
                model.zero_grad()
                began = time.perf_counter()
                out = model(x, lengths)
                (out.cls_logits.sum() + out.offsets.sum()).backward()
                times[order].append(time.perf_counter() - began)
                grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
                results[order] = [out.cls_logits.detach(), out.offsets.detach(), *grads]
        _use("grouped")
        identical = all(
            torch.equal(a, b)
            for a, b in zip(results["alternating"], results["grouped"], strict=True)
        )
        before, after = (1e3 * statistics.median(times[o][1:]) for o in ORDERS)
        rows.append({"model": config, "B": b, "T": t, "alternating_ms": before,
                     "grouped_ms": after, "speedup": before / after,
                     "outputs_and_grads_identical": identical})  # fmt: skip
    return rows


def graph_nodes() -> dict[str, int]:
    import onnx

    from amnet.checkpoint import save_checkpoint
    from amnet.export.to_onnx import export_onnx

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    torch.manual_seed(0)
    model = AMNet.from_config(cfg)
    nodes = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "tiny.pt"
        names = [f"class_{i}" for i in range(cfg["dataset"]["num_classes"])]
        save_checkpoint(ckpt, config=cfg, class_names=names, model=model.state_dict(), ema=None)
        for order in ORDERS:
            _use(order)
            path = export_onnx(ckpt, Path(tmp) / f"{order}.onnx", parity=False).path
            nodes[order] = len(onnx.load(str(path)).graph.node)
    _use("grouped")
    return nodes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7, help="interleaved steps (median reported)")
    p.add_argument("--json", action="store_true", help="last stdout line: the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, nodes = training_rows(args.rounds), graph_nodes()
    print(f"{args.threads} threads, median of {args.rounds} interleaved training steps")
    print("| model | B | T | alternating ms | grouped ms | speed-up | identical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['B']} | {r['T']} | {r['alternating_ms']:.1f} "
              f"| {r['grouped_ms']:.1f} | {r['speedup']:.2f}x "
              f"| {r['outputs_and_grads_identical']} |")  # fmt: skip
    print(f"exported tiny graph, nodes: alternating {nodes['alternating']:,}, "
          f"grouped {nodes['grouped']:,}")  # fmt: skip
    if args.json:
        print(json.dumps({"threads": args.threads, "rounds": args.rounds, "training": rows,
                          "graph_nodes": nodes}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
