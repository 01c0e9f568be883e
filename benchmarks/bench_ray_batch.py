"""Batch inference on Ray (``amnet-infer --workers N``) against one process, side by side.

Runs ``amnet-infer`` as users do (separate processes, real files) over one folder of feature
files, in interleaved rounds:

- one process with ``--threads T`` (ONNX Runtime's threads inside one call),
- one process with ``--threads 1``,
- ``--workers N`` on a local Ray cluster, one thread per worker (Ray start-up included).

    python benchmarks/bench_ray_batch.py --engine work/mem/paper.onnx \
        --features work/bench_data/features --limit 24 --workers 2 --rounds 2

Prints a markdown table of median seconds and snippets per second, and checks that every run
wrote the same detections (with one thread each, byte for byte).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--features", required=True, help="a folder of .npy files")
    p.add_argument("--limit", type=int, default=None, help="the first N files only")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads of the one-process run")
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args(argv)

    script = shutil.which("amnet-infer", path=str(Path(sys.executable).parent))
    files = sorted(Path(args.features).glob("*.npy"))[: args.limit]
    snippets = sum(np.load(f, mmap_mode="r").shape[0] for f in files)
    runs = {
        f"1 process, {args.threads} threads": ["--threads", str(args.threads)],
        "1 process, 1 thread": ["--threads", "1"],
        f"Ray, {args.workers} workers x 1 thread": ["--workers", str(args.workers)],
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, extra) in enumerate(runs.items()):
                out = Path(tmp) / f"out{r}_{i}.json"
                began = time.perf_counter()
                proc = subprocess.run(
                    [
                        script,
                        "--engine",
                        args.engine,
                        *map(str, files),
                        "-q",
                        "-o",
                        str(out),
                        *extra,
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                times[name].append(time.perf_counter() - began)
                if proc.returncode != 0:
                    print(f"{name}: failed: {proc.stderr.strip()}", file=sys.stderr)
                    return 2
                outputs[name] = out.read_text()
                print(f"round {r + 1} {name}: {times[name][-1]:.1f} s", flush=True)

    one_thread = list(runs)[1:]
    same = len({outputs[name] for name in one_thread}) == 1
    print()
    print(f"{len(files)} videos, {snippets} snippets; {args.rounds} interleaved round(s), median; "
          f"one-thread outputs identical: {same}")  # fmt: skip
    print()
    base = statistics.median(times[next(iter(runs))])
    print("| run | seconds | snippets/s | speed-up vs first |")
    print("| --- | --- | --- | --- |")
    for name in runs:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.1f} | {snippets / t:.0f} | {base / t:.2f}x |")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
