"""Where the test suite's time goes: CPU seconds per test file and per test, and the machine's.

On a 2-core machine the suite is bound by CPU, not by waiting: its wall time is about the CPU
it burns divided by the cores. This runs the suite as ``scripts/test.sh`` does (pytest-xdist,
one worker per core, the Ray tests in one group), records each test's CPU (its pytest
process's own and that of the children it waited for, set-up and tear-down included), and
the CPU the whole machine spent over the run (``/proc/stat``: Ray's daemons and processes
the tests do not wait for included).

    python benchmarks/suite_cpu.py [--top 25] [--json OUT.json] [-- PYTEST ARGS]

Prints markdown tables. Loaded by pytest as a plugin (``-p suite_cpu``) in each worker.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECORDS = "AMNET_SUITE_CPU_DIR"


# -- the pytest plugin --------------------------------------------------------------------


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _record_file() -> Path:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return Path(os.environ[RECORDS]) / f"{worker}.jsonl"


try:
    import pytest

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item: Any, nextitem: Any) -> Any:
        if RECORDS not in os.environ:
            yield
            return
        cpu, wall, start = _cpu_seconds(), time.perf_counter(), time.time()
        yield
        row = {
            "id": item.nodeid,
            "cpu": _cpu_seconds() - cpu,
            "wall": time.perf_counter() - wall,
            "start": start,  # epoch seconds: the run's timeline, worker by worker
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        }
        with open(_record_file(), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

except ImportError:  # pragma: no cover - the driver below does not need pytest itself
    pass


# -- the driver ---------------------------------------------------------------------------


def _children_cpu() -> float:
    """CPU seconds of this process's waited-for descendants: pytest, its workers, and what they
    waited for in turn."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _print_workers(rows: list[dict[str, Any]], began: float, wall: float) -> None:
    """When each worker ran tests: a worker that ends early while another still runs (a long
    group at the end) is wall time the suite spends on one core."""
    print("\n| worker | tests | first test starts (s) | last test ends (s) | in tests, wall s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    by_worker: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in rows:
        by_worker[r["worker"]].append(r)
    for worker, mine in sorted(by_worker.items()):
        first = min(r["start"] for r in mine) - began
        last = max(r["start"] + r["wall"] for r in mine) - began
        print(f"| {worker} | {len(mine)} | {first:.1f} | {last:.1f} | "
              f"{sum(r['wall'] for r in mine):.1f} |")  # fmt: skip
    print(f"\n(the run took {wall:.1f} s from start to pytest's exit)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=25, help="tests listed (default 25)")
    parser.add_argument("--json", help="also write the per-test records and totals here")
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as records:
        env = {
            **os.environ,
            RECORDS: records,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
            ),
        }
        command = [sys.executable, "-m", "pytest", "-q", "-n", "auto", "--dist", "loadgroup",
                   "-p", "suite_cpu", "-p", "no:cacheprovider", *args.pytest_args]  # fmt: skip
        busy, wall, began = _busy_seconds(), time.perf_counter(), time.time()
        waited = _children_cpu()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        busy, wall = _busy_seconds() - busy, time.perf_counter() - wall
        waited = _children_cpu() - waited
        rows = [
            json.loads(line)
            for path in Path(records).glob("*.jsonl")
            for line in path.read_text().splitlines()
        ]
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0:
        print(f"pytest exited {proc.returncode}: {summary}", file=sys.stderr)
        return proc.returncode

    cores = os.cpu_count() or 1
    tests_cpu = sum(r["cpu"] for r in rows)
    print(f"pytest: {summary}")
    print(f"wall {wall:.1f} s on {cores} cores; the machine busy {busy:.1f} CPU s "
          f"({busy / (wall * cores):.0%} of its capacity); the tests' own processes "
          f"{tests_cpu:.1f} CPU s, the rest (Ray daemons, pytest start-up and collection, "
          f"other load) {busy - tests_cpu:.1f}, of which pytest's processes outside the tests "
          f"(start-up, collection, the controller) {waited - tests_cpu:.1f}\n")  # fmt: skip

    per_file: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for r in rows:
        entry = per_file[r["id"].split("::")[0]]
        entry[0] += r["cpu"]
        entry[1] += r["wall"]
        entry[2] += 1
    print("| test file | tests | CPU s | wall s |\n| --- | ---: | ---: | ---: |")
    for name, (cpu, w, n) in sorted(per_file.items(), key=lambda kv: -kv[1][0]):
        print(f"| {name} | {n} | {cpu:.1f} | {w:.1f} |")
    _print_workers(rows, began, wall)
    print(f"\n| the {args.top} tests with the most CPU | CPU s | wall s |\n| --- | ---: | ---: |")
    for r in sorted(rows, key=lambda r: -r["cpu"])[: args.top]:
        print(f"| {r['id']} | {r['cpu']:.1f} | {r['wall']:.1f} |")
    if args.json:
        totals = {"wall_s": wall, "busy_cpu_s": busy, "tests_cpu_s": tests_cpu,
                  "pytest_cpu_s": waited, "cores": cores}  # fmt: skip
        Path(args.json).write_text(json.dumps({"totals": totals, "tests": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
