"""Two exported graphs of the same model side by side in ONNX Runtime: their node counts, the
time to open a session on each (the cold start of a Detector; opens interleaved, median), one
window per call (calls interleaved round by round, median ms), and the largest output
difference. For judging a change to the exported graph: export one checkpoint with the code
before and after it.

    python benchmarks/bench_onnx_pair.py BEFORE.onnx AFTER.onnx [--shapes 1x2304,1x288]
        [--rounds 10] [--opens 5] [--threads 2] [--json]

Both sessions are opened as the package opens them (``amnet.deploy.backend_onnx.open_session``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from amnet.deploy.backend_onnx import open_session
from amnet.metadata import read_onnx_metadata


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--shapes", default="1x2304", help="comma list of BATCHxSNIPPETS")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--opens", type=int, default=5, help="session opens per model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="also print the results as a JSON line")
    args = p.parse_args(argv)
    import onnx

    paths = {"before": args.before, "after": args.after}
    nodes = {name: len(onnx.load(path).graph.node) for name, path in paths.items()}
    opens: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.opens):
        for name, path in paths.items():
            started = time.perf_counter()
            open_session(path, intra_op_threads=args.threads)
            opens[name].append(time.perf_counter() - started)
    open_s = {name: statistics.median(t) for name, t in opens.items()}
    print("| graph | nodes | session open (s) |")
    print("| --- | ---: | ---: |")
    for name in paths:
        print(f"| {name} | {nodes[name]} | {open_s[name]:.3f} |")
    print(f"\nopen: {open_s['before'] / open_s['after']:.2f}× faster after\n")
    sessions = {
        name: open_session(path, intra_op_threads=args.threads) for name, path in paths.items()
    }
    channels = read_onnx_metadata(args.after)["config"]["dataset"]["input_dim"]
    rng = np.random.default_rng(0)
    rows = []
    print("| batch × T | before (ms) | after (ms) | speed-up | largest output difference |")
    print("| --- | --- | --- | --- | --- |")
    for shape in args.shapes.split(","):
        batch, length = (int(v) for v in shape.split("x"))
        feeds = {
            "features": rng.random((batch, length, channels), dtype=np.float32),
            "lengths": np.full((batch,), length, dtype=np.int64),
        }
        outputs = {name: s.run(None, feeds) for name, s in sessions.items()}  # also warms up
        diff = max(
            float(np.abs(a - b).max())
            for a, b in zip(outputs["before"], outputs["after"], strict=True)
        )
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                started = time.perf_counter()
                session.run(None, feeds)
                times[name].append(time.perf_counter() - started)
        before, after = (1e3 * statistics.median(times[n]) for n in ("before", "after"))
        rows.append({"batch": batch, "length": length, "before_ms": before, "after_ms": after,
                     "max_abs_diff": diff})  # fmt: skip
        print(f"| {batch} × {length} | {before:.1f} | {after:.1f} | {before / after:.2f}× "
              f"| {diff:.1e} |")  # fmt: skip
    if args.json:
        print(json.dumps({"before": args.before, "after": args.after, "nodes": nodes,
                          "open_s": open_s, "results": rows}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
