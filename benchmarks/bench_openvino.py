"""Is OpenVINO a better CPU runtime than ONNX Runtime for this model? Side by side, one process.

Runs one exported model (``[B, T, C]`` features and ``lengths`` in, scores and segments out) on
ONNX Runtime (fp32, and the INT8 model when given) and on OpenVINO's CPU plugin (fp32, and bf16
where the CPU has it), in interleaved rounds on the same input, and reports the median
milliseconds per window and the largest score difference from ONNX Runtime fp32.

    python benchmarks/bench_openvino.py --onnx work/mem/paper.onnx \
        [--int8 model.int8.onnx ...] [--length 2304] [--rounds 5] [--threads 2]

OpenVINO is not a dependency of the project (``pip install openvino`` to run this).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True)
    p.add_argument(
        "--int8", action="append", default=[], help="an INT8 model of the same export (repeat)"
    )
    p.add_argument("--length", type=int, default=2304)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import onnxruntime as ort
    import openvino as ov

    from amnet.deploy.backend_onnx import open_session
    from amnet.metadata import INPUT_NAMES

    session = open_session(args.onnx, "cpu", args.threads)
    dim = session.get_inputs()[0].shape[2]
    if not isinstance(dim, int):
        dim = 2048
    rng = np.random.default_rng(0)
    x = np.abs(rng.normal(0.0, 0.2, (1, args.length, dim))).astype(np.float32)
    lengths = np.array([args.length], dtype=np.int64)
    feeds = dict(zip(INPUT_NAMES, (x, lengths), strict=True))

    runners: dict[str, Callable[[], list[np.ndarray]]] = {
        "ONNX Runtime fp32": lambda: session.run(None, feeds)
    }
    for path in args.int8:
        int8 = open_session(path, "cpu", args.threads)
        runners[f"ONNX Runtime INT8 ({Path(path).name})"] = lambda s=int8: s.run(None, feeds)
    core = ov.Core()
    model = core.read_model(args.onnx)
    hints = ["f32"]
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        hints.append("bf16")
    for hint in hints:
        compiled = core.compile_model(
            model,
            "CPU",
            {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": args.threads},
        )
        request = compiled.create_infer_request()

        def run(request=request) -> list[np.ndarray]:
            result = request.infer(feeds)
            return [np.asarray(v) for v in result.values()]

        runners[f"OpenVINO {hint}"] = run

    reference = runners["ONNX Runtime fp32"]()[0]
    diffs, times = {}, {name: [] for name in runners}
    for name, run in runners.items():  # warm-up, and the accuracy check
        out = run()
        scores = next(o for o in out if o.shape == reference.shape)
        diffs[name] = float(np.abs(scores - reference).max())
    for _ in range(args.rounds):
        for name, run in runners.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)

    print(f"ONNX Runtime {ort.__version__}, OpenVINO {ov.__version__}; one window of "
          f"{args.length} snippets, {args.threads} threads, median of {args.rounds} "
          "interleaved rounds")  # fmt: skip
    print()
    base = statistics.median(times["ONNX Runtime fp32"])
    print("| runtime | ms per window | vs ONNX Runtime fp32 | max score difference |")
    print("| --- | --- | --- | --- |")
    for name in runners:
        t = statistics.median(times[name])
        print(f"| {name} | {1000 * t:.0f} | {base / t:.2f}x | {diffs[name]:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
