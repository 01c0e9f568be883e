"""Time live streams: features pushed block by block through ``Detector.stream()``.

A stream runs the model on each window as soon as it is complete and post-processes as it
goes (DESIGN §6.5): without a detection cap, every candidate is settled by soft-NMS, and
finality is checked several times per window. This reports where the time goes: the model
(the backend's calls) and the rest (post-processing and bookkeeping).

Usage::

    python benchmarks/bench_stream.py --engine MODEL [--features DIR] [--videos 6]
        [--length 1500] [--block 16] [--rounds 3] [--threads 1] [--json]

Without ``--features``, ``--videos`` synthetic videos of ``--length`` + 211 * i snippets
(non-negative, smooth, with a bump every ~60 snippets). Prints a markdown table, the median
over rounds; ``--json`` adds a JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from amnet.deploy import Detector
from amnet.fileio import load_features


def synthetic(count: int, length: int, dim: int) -> list[np.ndarray]:
    videos = []
    for i in range(count):
        rng = np.random.default_rng(i)
        n = length + 211 * i
        x = np.abs(rng.normal(0.0, 0.2, (n, dim))).astype(np.float32)
        for start in rng.integers(0, max(n - 20, 1), size=max(n // 60, 1)):
            x[start : start + 15, : dim // 8] += 0.6
        videos.append(x)
    return videos


class TimedBackend:
    """The detector's backend, with the seconds spent in its ``run`` added up."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, 0.0

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def one_round(det: Detector, videos: list[np.ndarray], block: int) -> dict:
    timed = det.backend = TimedBackend(det.backend)
    detections, start = 0, time.perf_counter()
    for x in videos:
        stream = det.stream()
        for a in range(0, len(x), block):
            detections += len(stream.push(x[a : a + block]))
        detections += len(stream.flush())
    seconds = time.perf_counter() - start
    det.backend = timed.inner
    return {"seconds": seconds, "model_s": timed.seconds, "detections": detections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True, help="a model (.onnx, .pt)")
    parser.add_argument("--features", type=Path, help="folder of .npy videos (default: synthetic)")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--length", type=int, default=1500)
    parser.add_argument("--block", type=int, default=16, help="snippets per push")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="model threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    det = Detector(args.engine, intra_op_threads=args.threads)
    if args.features:
        files = sorted(args.features.glob("*.npy"))
        videos = [det.prepare(load_features(p, det.input_dim)) for p in files]
    else:
        videos = synthetic(args.videos, args.length, det.input_dim)
    snippets = sum(len(x) for x in videos)
    rounds = [one_round(det, videos, args.block) for _ in range(args.rounds)]
    seconds = statistics.median(r["seconds"] for r in rounds)
    model_s = statistics.median(r["model_s"] for r in rounds)
    row = {
        "videos": len(videos),
        "snippets": snippets,
        "block": args.block,
        "window": det.max_seq_len,
        "seconds": round(seconds, 3),
        "model_s": round(model_s, 3),
        "rest_s": round(seconds - model_s, 3),
        "snippets_per_s": round(snippets / seconds, 1),
        "detections": rounds[0]["detections"],
        "rounds_s": [round(r["seconds"], 3) for r in rounds],
    }
    print("| videos | snippets | block | window | seconds | model | rest | snippets / s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {row['videos']} | {snippets:,} | {args.block} | {row['window']} | {seconds:.2f} "
        f"| {model_s:.2f} | {seconds - model_s:.2f} | {row['snippets_per_s']:,.0f} |"
    )
    if args.json:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
