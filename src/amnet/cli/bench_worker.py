"""The measurement process of ``amnet-bench``: one per backend, started by the benchmark
(``python -m amnet.cli.bench_worker``) and kept for that backend's rounds and latency runs, so
that the model is opened once and the peak resident memory is the backend's own.

Its start is also the backend's start-up measurement. Before it imports anything of the
project's runtime it times ``import amnet.deploy``; the first Detector it opens is timed too,
and the resident memory and whether torch got imported are read right after. That is what a
user's fresh process pays before its first detection, measured without a process of its own.

Protocol: one JSON spec per stdin line, one answer per spec on a stdout line that starts with
:data:`ANSWER` (other output, a library's print, is ignored by the benchmark). A measurement
that fails is answered as ``{"error": ...}``; the process goes on with the next spec. It ends
when stdin closes. Only the standard library is imported at module level.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ANSWER = "AMNET-BENCH-ANSWER "
# Each throughput round starts with one call on this many snippets of its first video.
WARMUP_SNIPPETS = 64


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process.

    Linux: ``VmHWM``, the high-water mark of this process's own address space. Not
    ``getrusage``'s ``ru_maxrss``: across fork + exec it carries over the parent's peak, so a
    small worker started by a large parent would report the parent's memory.
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / 1024 if sys.platform != "darwin" else value / 2**20


class _Measurements:
    """The worker's state: its open Detectors (one per spec key, kept for the next rounds and
    the latency runs) and its start-up figures, reported with the first answer after the
    first Detector opened."""

    def __init__(self, import_s: float) -> None:
        self.import_s = import_s
        self.opened: dict[str, tuple[Any, float]] = {}
        self.startup: dict[str, Any] | None = None
        self.startup_sent = False

    def detector(self, spec: Mapping[str, Any]) -> tuple[Any, float]:
        """The Detector for ``spec`` and the seconds its opening took."""
        from amnet.deploy.detector import Detector

        key = json.dumps([spec["model"], spec["device"], spec["threads"], spec["options"]])
        if key not in self.opened:
            began = time.perf_counter()
            detector = Detector(
                spec["model"], spec["device"], intra_op_threads=spec["threads"], **spec["options"]
            )
            construct_s = time.perf_counter() - began
            if self.startup is None:  # read before anything else is imported or allocated
                self.startup = {
                    "import_s": self.import_s,
                    "construct_s": construct_s,
                    "rss_mb": _proc_status_mb("VmRSS"),
                    "torch_imported": "torch" in sys.modules,
                }
            self.opened[key] = (detector, construct_s)
        return self.opened[key]

    def throughput(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The videos as ``amnet-infer`` runs a folder: files read ahead on a thread, and one
        stream of videos through :meth:`Detector.detect_raw_iter`."""
        from amnet.fileio import atomic_write_json, read_ahead, read_features
        from amnet.results import results_to_json

        detector, load_s = self.detector(spec)
        files = [Path(p) for p in spec["features"]]
        first = read_features(files[0], detector.input_dim)
        detector.detect_raw(first[:WARMUP_SNIPPETS])
        del first
        sizes: list[int] = []

        def read(path: Path) -> Any:
            array = read_features(path, detector.input_dim, mmap=True)
            sizes.append(array.shape[0])
            return array

        began = time.perf_counter()
        found = detector.detect_raw_iter(read_ahead(files, read))
        results = {path.stem: dets for path, dets in zip(files, found, strict=True)}
        atomic_write_json(spec["results"], results_to_json(results, detector.class_names))
        seconds = time.perf_counter() - began
        snippets = sum(sizes)
        return {
            "videos": len(files),
            "snippets": snippets,
            "seconds": seconds,
            "snippets_per_s": snippets / seconds if seconds > 0 else math.inf,
            "peak_rss_mb": peak_rss_mb(),
            "load_s": load_s,
            "device": detector.device,
        }

    def latency(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        detector, _ = self.detector(spec)
        rows = []
        for path in spec["latency"]:
            feats = np.load(path, allow_pickle=False)
            detector.detect_raw(feats)  # warm-up: first call at this shape
            times = []
            for _ in range(int(spec["repeats"])):
                began = time.perf_counter()
                detector.detect_raw(feats)
                times.append(time.perf_counter() - began)
            rows.append(
                {
                    "snippets": int(feats.shape[0]),
                    "median_s": statistics.median(times),
                    "min_s": min(times),
                    "runs": len(times),
                }
            )
        return {"latency": rows, "peak_rss_mb": peak_rss_mb()}

    def answer(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        measure: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "throughput": self.throughput,
            "latency": self.latency,
        }
        try:
            answer = measure[spec["mode"]](spec)
        except Exception as exc:  # reported to the benchmark, in one line (a bad spec too)
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        if self.startup is not None and not self.startup_sent:
            answer["startup"] = self.startup
            self.startup_sent = True
        return answer


def main() -> int:
    began = time.perf_counter()
    import amnet.deploy  # noqa: F401  (timed: the first thing a runtime user imports)

    state = _Measurements(time.perf_counter() - began)
    for line in sys.stdin:
        try:
            spec = json.loads(line)
        except json.JSONDecodeError as exc:
            answer = {"error": f"not a JSON spec: {exc}"}
        else:
            answer = state.answer(spec)
        print(ANSWER + json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
