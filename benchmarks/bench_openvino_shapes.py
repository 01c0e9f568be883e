"""OpenVINO's full-window static-shape model against its dynamic one, side by side, one process.

Opens one exported model twice with the OpenVINO backend: as shipped (the full window also
compiled with static shapes, DESIGN §6.4) and with ``static_window=False`` (dynamic shapes
only). Runs single chunks of several lengths through both in interleaved rounds and reports
the median milliseconds per chunk, the speed-up, the path the shipped backend took and the
largest differences between the two. Also reports each variant's load time and, from a fresh
process per variant, the peak resident memory after loading it and running the full window.

    python benchmarks/bench_openvino_shapes.py --onnx model.onnx \
        [--precision bf16] [--lengths 2304,2000,1728,1500,1000,256] [--rounds 5] [--threads 2]

Needs the ``[openvino]`` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np


def _peak_mb(onnx: str, precision: str, threads: int, static: bool) -> float:
    """Peak resident memory (MB) of a fresh process that opens the model and runs one chunk of
    the full window (run in a child through multiprocessing's spawn context)."""
    import resource

    from amnet.deploy.backend_openvino import OpenVinoBackend

    backend = OpenVinoBackend(onnx, None, threads, precision=precision, static_window=static)
    x = np.zeros((1, backend.window, backend._input_dim), dtype=np.float32)
    backend.run(x, np.array([backend.window], dtype=np.int64))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True)
    p.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    p.add_argument("--lengths", default="2304,2000,1728,1500,1000,256")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import multiprocessing

    from amnet.deploy.backend_openvino import OpenVinoBackend

    variants = (("dynamic only", False), ("shipped", True))
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        peaks = {
            name: pool.apply(_peak_mb, (args.onnx, args.precision, args.threads, static))
            for name, static in variants
        }
    opened = {}
    for name, static in variants:
        start = time.perf_counter()
        backend = OpenVinoBackend(
            args.onnx, None, args.threads, precision=args.precision, static_window=static
        )
        opened[name] = (backend, time.perf_counter() - start, peaks[name])
    shipped = opened["shipped"][0]
    rng = np.random.default_rng(0)
    dim = shipped._input_dim
    rows = []
    for length in (int(v) for v in args.lengths.split(",")):
        x = np.abs(rng.normal(0.0, 0.2, (1, length, dim))).astype(np.float32)
        lengths = np.array([length], dtype=np.int64)
        shipped._local = threading.local()  # the model that runs shows as its infer request
        outs = {name: b.run(x, lengths) for name, (b, _, _) in opened.items()}
        took_static = hasattr(shipped._local, "static_request")
        times: dict[str, list[float]] = {name: [] for name in opened}
        for _ in range(args.rounds):
            for name, (b, _, _) in opened.items():
                start = time.perf_counter()
                b.run(x, lengths)
                times[name].append(time.perf_counter() - start)
        dyn = statistics.median(times["dynamic only"]) * 1e3
        new = statistics.median(times["shipped"]) * 1e3
        rows.append(
            {
                "length": length,
                "path": "static" if took_static else "dynamic",
                "dynamic_ms": round(dyn, 1),
                "shipped_ms": round(new, 1),
                "speedup": round(dyn / new, 3),
                "max_score_diff": float(np.abs(outs["shipped"][0] - outs["dynamic only"][0]).max()),
                "max_segment_diff": float(
                    np.abs(outs["shipped"][1] - outs["dynamic only"][1]).max()
                ),
            }
        )
    print(f"OpenVINO {args.precision}, {args.threads} threads, {args.rounds} interleaved rounds")
    for name, (_, load_s, peak) in opened.items():
        print(f"{name}: load {load_s:.2f} s; peak resident memory {peak:.0f} MB (fresh process)")
    print(
        "| T | shipped path | dynamic only ms | shipped ms | speed-up | max Δ score | max Δ segment |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['length']} | {r['path']} | {r['dynamic_ms']} | {r['shipped_ms']} | "
            f"{r['speedup']:.2f} | {r['max_score_diff']:.2g} | {r['max_segment_diff']:.2g} |"
        )
    if args.json:
        loads = {name: {"load_s": s, "peak_rss_mb": m} for name, (_, s, m) in opened.items()}
        Path(args.json).write_text(
            json.dumps({"precision": args.precision, "loads": loads, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
