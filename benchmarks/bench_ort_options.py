"""Choose ONNX Runtime's CPU session options by measurement: one chunk through an exported model
with each combination of graph optimisation level, memory arena and memory-pattern planning,
interleaved round by round so that load changes hit every setting alike.

    python benchmarks/bench_ort_options.py --onnx work/mem/paper.onnx [--length 2304]
        [--rounds 5] [--threads 2]

Prints a markdown table (median and min ms per call, relative to the package's current
options) and, with ``--json``, a JSON line. Peak memory is not compared here: all settings
share one process (``amnet-bench`` measures it per backend).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True)
    p.add_argument("--length", type=int, default=2304, help="snippets in the chunk")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ORT's default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    settings = list(itertools.product(levels, (True, False), (True, False)))
    sessions = {}
    for level, arena, pattern in settings:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = levels[level]
        options.enable_cpu_mem_arena = arena
        options.enable_mem_pattern = pattern
        if args.threads:
            options.intra_op_num_threads = args.threads
        sessions[(level, arena, pattern)] = ort.InferenceSession(
            args.onnx, options, providers=["CPUExecutionProvider"]
        )
    dim = sessions[settings[0]].get_inputs()[0].shape[2]
    rng = np.random.default_rng(0)
    feeds = {
        "features": np.abs(rng.normal(0, 0.2, (1, args.length, dim))).astype(np.float32),
        "lengths": np.array([args.length], dtype=np.int64),
    }
    for session in sessions.values():  # warm-up: first-call allocations and planning
        session.run(None, feeds)
    times: dict[tuple, list[float]] = {key: [] for key in sessions}
    for _ in range(args.rounds):
        for key, session in sessions.items():
            began = time.perf_counter()
            session.run(None, feeds)
            times[key].append(1e3 * (time.perf_counter() - began))

    current = ("all", True, True)  # ONNX Runtime's defaults, which open_session keeps
    base = statistics.median(times[current])
    rows = [
        {
            "graph_optimization": level,
            "cpu_mem_arena": arena,
            "mem_pattern": pattern,
            "median_ms": statistics.median(times[(level, arena, pattern)]),
            "min_ms": min(times[(level, arena, pattern)]),
        }
        for level, arena, pattern in settings
    ]
    print(f"one chunk of {args.length} snippets, {args.rounds} interleaved rounds, "
          f"threads {args.threads or 'default'}")  # fmt: skip
    print()
    print("| graph optimisation | arena | memory pattern | median ms | min ms | vs defaults |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in sorted(rows, key=lambda r: r["median_ms"]):
        print(
            f"| {row['graph_optimization']} | {row['cpu_mem_arena']} | {row['mem_pattern']} | "
            f"{row['median_ms']:.0f} | {row['min_ms']:.0f} | {row['median_ms'] / base:.2f} |"
        )
    if args.json:
        print(json.dumps({"length": args.length, "rounds": args.rounds, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
