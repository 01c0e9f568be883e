"""A folder of videos on OpenVINO, as ``amnet-infer`` runs it: what the batch path's choices buy.

Runs every ``.npy`` of ``--features`` through :meth:`Detector.detect_raw_iter` (files read one
ahead on a thread, memory-mapped), side by side in one process, the variants taking turns in
each round:

- ``inline``: backend calls made on the caller's thread, one after another (before the runner
  thread), dynamic-shape chunks at their own length (``DYNAMIC_STEP = 1``);
- ``runner``: backend calls on the Detector's runner thread, chunks at their own length;
- ``runner+step``: as shipped, dynamic-shape chunks also padded to a multiple of
  ``DYNAMIC_STEP`` (128) snippets.

Each run opens a fresh Detector (not timed), so OpenVINO's kernels for every shape are
prepared inside the run, as in a fresh ``amnet-infer`` process. Reports the seconds of each
run, the median per variant, and the largest score difference from the ``inline`` variant.

    python benchmarks/bench_openvino_batch.py --onnx model.static-int8.onnx \
        --features data/features [--precision bf16] [--rounds 2] [--threads 2] [--videos N]

Needs the ``[openvino]`` extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("inline", "runner", "runner+step")


class _Inline:
    """An executor that runs each call at once on the caller's thread."""

    def submit(self, fn: Any, *args: Any) -> Future:
        done: Future = Future()
        done.set_result(fn(*args))
        return done


def _run(detector: Any, files: list[Path]) -> tuple[float, list[Any]]:
    from amnet.fileio import read_ahead, read_features

    def read(path: Path) -> np.ndarray:
        return read_features(path, detector.input_dim, mmap=True)

    began = time.perf_counter()
    found = list(detector.detect_raw_iter(read_ahead(files, read)))
    return time.perf_counter() - began, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", required=True, help="the .onnx model")
    parser.add_argument("--features", required=True, help="a folder of .npy feature files")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--videos", type=int, help="only the first N files")
    args = parser.parse_args()

    import amnet.deploy.backend_openvino as backend_openvino
    from amnet.deploy.detector import Detector

    files = sorted(Path(args.features).glob("*.npy"))[: args.videos]
    step = backend_openvino.DYNAMIC_STEP
    seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    found: dict[str, list[Any]] = {}
    for round_ in range(args.rounds):
        for variant in VARIANTS:
            backend_openvino.DYNAMIC_STEP = step if variant == "runner+step" else 1
            detector = Detector(
                args.onnx, runtime="openvino", precision=args.precision,
                intra_op_threads=args.threads,
            )  # fmt: skip
            if variant == "inline":
                detector._runner = lambda: _Inline()  # type: ignore[method-assign]
            took, found[variant] = _run(detector, files)
            detector.close()
            seconds[variant].append(round(took, 2))
            print(f"round {round_ + 1} {variant}: {took:.2f} s", flush=True)
    backend_openvino.DYNAMIC_STEP = step
    diffs = {
        v: max(
            float(np.abs(a.scores - b.scores).max()) if len(a) and len(a) == len(b) else 0.0
            for a, b in zip(found["inline"], found[v], strict=True)
        )
        for v in VARIANTS[1:]
    }
    report = {
        "videos": len(files),
        "snippets": int(sum(np.load(f, mmap_mode="r").shape[0] for f in files)),
        "precision": args.precision,
        "threads": args.threads,
        "seconds": seconds,
        "median": {v: statistics.median(s) for v, s in seconds.items()},
        "max_score_diff_vs_inline": diffs,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
