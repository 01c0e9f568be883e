"""OpenVINO's dynamic-shape model on chunks shorter than the window: what the backend's shape
choices are based on.

Two measurements on one exported model, OpenVINO directly (not the backend), one process:

1. **New shapes** (``DYNAMIC_STEP``): 40 chunks of random lengths (100-1,700 snippets) through
   a freshly compiled dynamic model, twice: the first pass meets every shape for the first time,
   the second meets them again. Then the same with every length padded up to a multiple of
   ``--step``, as the backend does.
2. **A ladder of static models**: for each length T, the dynamic model (warm) against a model
   compiled with static shapes for exactly T, in milliseconds per chunk, and the resident memory
   that compiling and running the static model added.

    python benchmarks/bench_openvino_ladder.py --onnx model.static-int8.onnx \
        [--precision bf16] [--threads 2] [--step 128] [--lengths 2304,1728,1152,576,288,128]

Needs the ``[openvino]`` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np


def _rss_mb() -> float:
    from amnet.cli.bench_worker import _proc_status_mb

    return _proc_status_mb("VmRSS") or float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", type=int, default=128)
    parser.add_argument("--lengths", default="2304,1728,1152,576,288,128")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from amnet.deploy.backend_openvino import compile_config, import_openvino
    from amnet.metadata import INPUT_NAMES

    ov = import_openvino()
    core = ov.Core()
    config = compile_config(args.precision, args.threads)  # as the backend compiles
    model = core.read_model(args.onnx)
    dim = int(model.input(INPUT_NAMES[0]).get_partial_shape()[2].get_length())
    lengths = [int(v) for v in args.lengths.split(",")]
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0.0, 0.2, (1, max([*lengths, 1700]), dim))).astype(np.float32)

    def infer(request: Any, t: int, padded: int) -> float:
        inputs = np.zeros((1, padded, dim), np.float32)
        inputs[0, :t] = x[0, :t]
        began = time.perf_counter()
        request.infer({INPUT_NAMES[0]: inputs, INPUT_NAMES[1]: np.array([t], np.int64)})
        return time.perf_counter() - began

    report: dict[str, object] = {"precision": args.precision, "threads": args.threads}
    chunks = [int(t) for t in rng.integers(100, 1700, 40)]
    shapes = {}
    for name, step in (("exact", 1), (f"multiple of {args.step}", args.step)):
        request = core.compile_model(model, "CPU", config).create_infer_request()
        padded = [-(-t // step) * step for t in chunks]
        passes = [sum(infer(request, t, p) for t, p in zip(chunks, padded, strict=True))
                  for _ in range(2)]  # fmt: skip
        shapes[name] = {"first_s": passes[0], "second_s": passes[1], "snippets": sum(padded),
                        "distinct": len(set(padded))}  # fmt: skip
        print(f"new shapes, {name}: first pass {passes[0]:.2f} s, second {passes[1]:.2f} s, "
              f"{sum(padded)} snippets, {len(set(padded))} shapes", flush=True)  # fmt: skip
    report["new_shapes"] = shapes

    dynamic = core.compile_model(model, "CPU", config).create_infer_request()
    rows = []
    for t in lengths:
        before = _rss_mb()
        static_model = model.clone()
        static_model.reshape({INPUT_NAMES[0]: [1, t, dim], INPUT_NAMES[1]: [1]})
        static = core.compile_model(static_model, "CPU", config).create_infer_request()
        infer(static, t, t)
        infer(dynamic, t, t)
        static_ms = statistics.median(infer(static, t, t) for _ in range(args.repeats)) * 1e3
        added = _rss_mb() - before
        dynamic_ms = statistics.median(infer(dynamic, t, t) for _ in range(args.repeats)) * 1e3
        rows.append({"length": t, "dynamic_ms": round(dynamic_ms, 1),
                     "static_ms": round(static_ms, 1), "speedup": round(dynamic_ms / static_ms, 2),
                     "static_adds_mb": round(added)})  # fmt: skip
        print(f"T {t}: dynamic {dynamic_ms:.1f} ms, static {static_ms:.1f} ms "
              f"({dynamic_ms / static_ms:.2f}x), the static model added {added:.0f} MB",
              flush=True)  # fmt: skip
        del static, static_model
    report["ladder"] = rows
    print(json.dumps(report))


if __name__ == "__main__":
    main()
