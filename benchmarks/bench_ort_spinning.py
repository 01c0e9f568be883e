"""ONNX Runtime's spinning CPU threads, alone and beside other CPU work: one window per call
through two sessions of one model, opened as the package opens them, one whose idle threads
busy-wait for work (ONNX Runtime's default) and one whose threads sleep
(``OMP_WAIT_POLICY=PASSIVE``, ``amnet.deploy.backend_onnx.spinning_allowed``).

    python benchmarks/bench_ort_spinning.py --onnx MODEL.onnx [--length 2304] [--rounds 5]
        [--calls 5] [--threads 0] [--busy 1] [--json]

Each round runs ``--calls`` calls on each session, the sessions alternating, first with the
machine to themselves and then beside ``--busy`` processes that each keep one core busy
(pure Python arithmetic: the rest of a pipeline, such as feature extraction). Prints the
median ms per call and the process's CPU seconds per call for each setting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import statistics
import time
from typing import Any

import numpy as np

from amnet.deploy.backend_onnx import open_session
from amnet.metadata import INPUT_NAMES, OUTPUT_NAMES, read_onnx_metadata


def _burn(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def _cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _measure(session: Any, feed: dict[str, np.ndarray], calls: int) -> tuple[float, float]:
    """Median wall seconds per call and CPU seconds per call of ``calls`` calls."""
    walls = []
    cpu = _cpu()
    for _ in range(calls):
        started = time.perf_counter()
        session.run(list(OUTPUT_NAMES), feed)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls), (_cpu() - cpu) / calls


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True)
    p.add_argument("--length", type=int, default=2304, help="snippets in the window")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--calls", type=int, default=5, help="calls per session per round")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ORT's default)")
    p.add_argument("--busy", type=int, default=1, help="busy processes beside the sessions")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    sessions = {
        spin: open_session(args.onnx, intra_op_threads=args.threads or None, spinning=spin)
        for spin in (True, False)
    }
    dim = int(read_onnx_metadata(sessions[True], args.onnx)["input_dim"])
    rng = np.random.default_rng(0)
    feed = {
        INPUT_NAMES[0]: np.abs(rng.normal(0, 0.2, (1, args.length, dim))).astype(np.float32),
        INPUT_NAMES[1]: np.array([args.length], dtype=np.int64),
    }
    for session in sessions.values():  # warm-up
        session.run(list(OUTPUT_NAMES), feed)

    results: dict[tuple[str, bool], dict[str, list[float]]] = {
        (load, spin): {"ms": [], "cpu_ms": []} for load in ("alone", "busy") for spin in sessions
    }
    context = multiprocessing.get_context("spawn")
    for _ in range(args.rounds):
        for load in ("alone", "busy"):
            stop = context.Event()
            burners = [context.Process(target=_burn, args=(stop,)) for _ in range(args.busy)]
            if load == "busy":
                for b in burners:
                    b.start()
                time.sleep(0.5)  # started and spinning
            try:
                for spin, session in sessions.items():
                    wall, cpu = _measure(session, feed, args.calls)
                    results[(load, spin)]["ms"].append(1000 * wall)
                    results[(load, spin)]["cpu_ms"].append(1000 * cpu)
            finally:
                stop.set()
                if load == "busy":
                    for b in burners:
                        b.join()

    rows = []
    print("| machine | threads spin | ms per call (median) | CPU ms per call | vs spinning |")
    print("| --- | --- | ---: | ---: | ---: |")
    for load in ("alone", "busy"):
        base = statistics.median(results[(load, True)]["ms"])
        for spin in (True, False):
            ms = statistics.median(results[(load, spin)]["ms"])
            cpu = statistics.median(results[(load, spin)]["cpu_ms"])
            where = "to itself" if load == "alone" else f"beside {args.busy} busy process(es)"
            print(f"| {where} | {'yes' if spin else 'no'} | {ms:.1f} | {cpu:.1f} | "
                  f"{ms / base:.2f}x |")  # fmt: skip
            rows.append({"load": load, "spinning": spin, "ms": ms, "cpu_ms": cpu})
    if args.json:
        print(json.dumps({"length": args.length, "threads": args.threads, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
