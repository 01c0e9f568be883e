"""Where OpenVINO spends one window: its per-node counters, summed by kind of node.

Each model is compiled as the backend compiles it (``compile_config``), with ``PERF_COUNT``
on, at a static window of ``--length`` snippets (``--dynamic`` keeps T dynamic, as the
backend's shorter windows run), then timed over ``--rounds`` calls on one synthetic I3D-like
input; the counters of the last call are summed by (node type, kernel family).

    python benchmarks/profile_openvino.py work/rt2304s/model.int8.onnx work/other/model.onnx \
        [--length 2304] [--precision bf16] [--threads 2] [--rounds 5] [--top 12]

Models are profiled one after another in one process; compare their medians, and rerun to see
the machine's spread. OpenVINO is the ``[openvino]`` extra.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help=".onnx models of the same input size")
    p.add_argument("--length", type=int, default=2304)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--top", type=int, default=12, help="kinds of node listed per model")
    p.add_argument("--dynamic", action="store_true", help="keep T dynamic (no reshape)")
    args = p.parse_args(argv)

    import openvino as ov

    from amnet.deploy.backend_openvino import compile_config
    from amnet.metadata import INPUT_NAMES, read_onnx_metadata

    core = ov.Core()
    for path in args.models:
        dim = int(read_onnx_metadata(path)["input_dim"])
        rng = np.random.default_rng(0)
        feed = {
            INPUT_NAMES[0]: np.abs(rng.normal(0.0, 0.3, (1, args.length, dim))).astype(np.float32),
            INPUT_NAMES[1]: np.array([args.length], dtype=np.int64),
        }
        model = core.read_model(path)
        if not args.dynamic:
            model.reshape({INPUT_NAMES[0]: [1, args.length, dim], INPUT_NAMES[1]: [1]})
        config = {**compile_config(args.precision, args.threads), "PERF_COUNT": True}
        request = core.compile_model(model, "CPU", config).create_infer_request()
        request.infer(feed)  # first call: kernels are built
        times = []
        for _ in range(args.rounds):
            began = time.perf_counter()
            request.infer(feed)
            times.append(time.perf_counter() - began)
        spent: collections.Counter[tuple[str, str]] = collections.Counter()
        nodes: collections.Counter[tuple[str, str]] = collections.Counter()
        for info in request.profiling_info:
            kind = (info.node_type, (info.exec_type or "").split("_")[0])
            spent[kind] += info.real_time.total_seconds() * 1000
            nodes[kind] += 1
        print(
            f"{path}: {1000 * statistics.median(times):.1f} ms per window (median of "
            f"{args.rounds}), {sum(spent.values()):.1f} ms in the counters, T = {args.length}"
            f"{' dynamic' if args.dynamic else ''}, {args.precision}, {args.threads} threads"
        )
        for (node_type, family), ms in spent.most_common(args.top):
            print(f"  {ms:8.1f} ms  {nodes[(node_type, family)]:4d}  {node_type} ({family})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
