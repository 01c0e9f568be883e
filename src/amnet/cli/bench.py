"""``amnet-bench``: end-to-end speed and memory of every backend on a THUMOS14-shaped test set.

::

    amnet-bench (--config CFG | --engine MODEL)
        [--layout ANNOTATIONS.json [--subset test] | --preset thumos14|tiny] [--videos N]
        [--seed S] [--backends torch,torch-bf16,onnxruntime,onnxruntime-int8,openvino-bf16,openvino-int8,
                    openvino-int8-bf16,tensorrt]
        [--device cpu|cuda]
        [--threads N] [--rounds 2] [--latency 256,2304,12551] [--repeats 3] [--work DIR]
        [--json] [--keep-going]

What it does (DESIGN §7):

1. **Data**: a synthetic test set (:mod:`amnet.synth`) with the videos, durations and actions of
   a real annotation file (``--layout``, e.g. THUMOS14's ``test`` subset) or drawn from a preset
   (default ``thumos14``: its 212-video test split), the first ``--videos`` of them.
2. **Model**: from ``--config``, an initialised model (random weights, input statistics from
   the synthetic features, as training would set them) saved as a checkpoint, then exported to
   ONNX (and INT8 ONNX) with :func:`amnet.export.to_onnx.export_onnx` and, where TensorRT and a
   GPU exist, built into an engine. With ``--engine`` the given model is used: a ``.pt`` is
   exported as above, an ``.onnx`` serves ONNX Runtime (its INT8 sibling, or one quantized
   here), a ``.plan`` TensorRT only. ``torch-bf16`` runs the checkpoint under bfloat16
   autocast on ``--device`` (skipped where it has no bfloat16 arithmetic). ``openvino-int8``
   runs a static INT8 (QDQ) model: the sibling when it is static, else one quantized here,
   calibrated on 16 windows of the benchmark's own features (it measures speed; static INT8's
   accuracy is measured on a trained model by ``benchmarks/bench_cpu_runtimes.py``);
   ``openvino-int8-bf16`` runs that model with its float remainder in bf16. Backends
   that cannot run are reported as skipped, with the reason.
3. **Throughput**, in ``--rounds`` rounds with the backends taking turns (A B C, A B C), so a
   change in the machine's load hits them alike; each row is a backend's median round. Each
   backend has a process of its own (so that its peak RSS is its own), started for its first
   round and kept for its other rounds and its latency runs: it opens the
   :class:`~amnet.deploy.Detector` once, and each round runs one short warm-up call, then the
   videos as ``amnet-infer`` runs a folder (the ``.npy`` files read one ahead on a thread, one
   stream of videos through the Detector), and finally writes the results JSON. ``seconds``
   covers reading, inference, post-processing and writing, not the model load (``load_s``);
   ``snippets_per_s`` = snippets / seconds; ``peak_rss_mb`` = the process's peak resident
   memory; ``speedup`` = torch seconds / backend seconds and ``rss_ratio`` = backend peak RSS /
   torch peak RSS (same run). ``agree_top10`` = the share of the PyTorch top-10 detections per
   video that the backend reproduces (same class, tIoU >= 0.9, score within 0.01).
   The machine's fp32 matmul rate (GFLOP/s, torch when installed, else numpy) is measured
   before and after the rounds; ``snippets_per_s_per_gflops`` divides by their mean, so that
   runs on different machines or loads compare.
4. **Latency** (``--latency``): one synthetic video of each length T, in the backend's process
   after its rounds; median (and min) seconds of ``--repeats`` calls after one warm-up call.
5. **Startup**: measured as each backend's process starts (:mod:`amnet.cli.bench_worker`),
   before it imports anything else of the runtime: the time to ``import amnet.deploy`` and to
   construct the Detector, the resident memory after, and whether torch got imported.

A backend that fails makes the run exit 2 after the report (``--keep-going``: exit 0), as does a
run that measured nothing. Output: a table on stdout; with ``--json`` the last stdout line is
``{"results": [{"backend", "videos", "snippets", "seconds", "snippets_per_s", "peak_rss_mb",
...}], "skipped": [{"backend", "reason"}], "latency": [...], "startup": [...], "setup": {...}}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amnet.cli.bench_worker import ANSWER
from amnet.cli.common import OneLineParser, run_cli, setup_logging
from amnet.errors import AMNetError
from amnet.fileio import exclusive_lock
from amnet.layouts import layout_path

logger = logging.getLogger("amnet.deploy.bench")

PROG = "amnet-bench"
BACKENDS = (
    "torch",
    "torch-bf16",
    "onnxruntime",
    "onnxruntime-int8",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8-bf16",
    "tensorrt",
)
ONNX_BACKENDS = (
    "onnxruntime",
    "onnxruntime-int8",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8-bf16",
)
# Static INT8 for openvino-int8: calibrated on this many windows of the benchmark's own
# features (the benchmark measures speed; static INT8's accuracy is measured on a trained
# model by benchmarks/bench_cpu_runtimes.py).
BENCH_CALIBRATION_WINDOWS = 16
# Detector options of the backends that are a runtime choice on a shared model file.
BACKEND_OPTIONS: dict[str, dict[str, str]] = {
    "torch-bf16": {"precision": "bf16"},
    "openvino-bf16": {"runtime": "openvino", "precision": "bf16"},
    "openvino-int8": {"runtime": "openvino"},
    "openvino-int8-bf16": {"runtime": "openvino", "precision": "bf16"},
}
PRESETS = ("thumos14", "tiny")
_WORKER_TIMEOUT_S = 3 * 3600


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Benchmark the runtime backends end to end (read .npy -> detections -> "
        "results JSON) on a THUMOS14-shaped synthetic test set, each in its own process.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="CFG", help="build an initialised model from a config")
    source.add_argument("--engine", metavar="MODEL", help="benchmark this .pt/.onnx/.plan model")
    parser.add_argument(
        "--layout", metavar="ANNOTATIONS.json", help="copy videos and actions from this file"
    )
    parser.add_argument("--subset", metavar="S", help="subset of --layout (default: test)")
    parser.add_argument(
        "--preset", choices=PRESETS, help="drawn layout without --layout (default: thumos14)"
    )
    parser.add_argument("--videos", type=int, metavar="N", help="first N videos (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="data and weights seed (default: 0)")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated, from " + ", ".join(BACKENDS) + " (default: all)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads per call (default: engine default)"
    )
    parser.add_argument(
        "--latency", metavar="T,...", help="also time one video of each length T (snippets)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="latency runs per T (default: 3)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="throughput runs per backend, interleaved across backends; the median is "
        "reported (default: 2)",
    )
    parser.add_argument(
        "--work", metavar="DIR", help="keep data, models and results here (default: a temp dir)"
    )
    parser.add_argument("--json", action="store_true", help="last stdout line: JSON results")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="a backend that fails is reported and the run still exits 0 (default: exit 2)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="less logging")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


# -- the backends' processes ----------------------------------------------------------------


class _Worker:
    """One backend's measurement process (:mod:`amnet.cli.bench_worker`), started once and
    kept for all its rounds and its latency runs. Its stderr goes to a log file in the work
    folder."""

    def __init__(self, work: Path, name: str) -> None:
        self.name = name
        self.startup: dict[str, Any] | None = None
        self.log = work / f"worker_{name}.log"
        self._stderr = open(self.log, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amnet.cli.bench_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=work,
        )

    def ask(self, spec: Mapping[str, Any], timeout: float = _WORKER_TIMEOUT_S) -> dict[str, Any]:
        what = f"{self.name} {spec['mode']} run"
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(spec) + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise AMNetError(f"{what} failed: {self._last_error()}") from None
        lines: list[str] = []

        def read() -> None:  # on a thread: a hung worker must not hang the benchmark
            for line in self.proc.stdout:  # type: ignore[union-attr]
                if line.startswith(ANSWER):
                    lines.append(line[len(ANSWER) :])
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            self.proc.kill()
            raise AMNetError(f"{what} timed out after {timeout:.0f} s")
        if not lines:  # stdout closed: the process died
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            raise AMNetError(f"{what} failed (exit {code}): {self._last_error()}")
        answer = json.loads(lines[0])
        if "startup" in answer:  # sent once, with the answer after its first Detector opened
            self.startup = answer.pop("startup")
        if "error" in answer:
            raise AMNetError(f"{what} failed: {answer['error']}")
        return answer

    def _last_error(self) -> str:
        self._stderr.flush()
        text = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return (text or ["no output"])[-1][:300]

    def close(self, abort: bool = False) -> None:
        """End the worker: after its current run, or at once with ``abort`` (the benchmark was
        stopped or failed: its runs would be thrown away)."""
        if abort:
            self.proc.kill()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # end of specs: the worker exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def _matmul_gflops(threads: int | None, size: int = 1024, repeats: int = 5) -> float:
    """The machine's fp32 matmul rate right now (GFLOP/s, median of ``repeats``): the yardstick
    that makes throughputs from different machines or loads comparable. torch when installed
    (its CPU matmul is what the PyTorch backend runs), numpy otherwise."""
    torch: Any
    try:
        import torch
    except ModuleNotFoundError:
        torch = None
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    if torch is not None:
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        run = lambda: torch.mm(ta, tb)  # noqa: E731
    else:
        run = lambda: a @ b  # noqa: E731
    run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    if torch is not None:
        torch.set_num_threads(previous)
    return 2 * size**3 / statistics.median(times) / 1e9


# -- preparation (parent process) ------------------------------------------------------------


def _parse_backends(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise AMNetError(
            f"--backends: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(BACKENDS)})"
        )
    return list(dict.fromkeys(names))


def _parse_lengths(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AMNetError(f"--latency: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise AMNetError(f"--latency: lengths must be >= 1, got {text!r}")
    return values


def _dataset(args: Any, work: Path, dim: int) -> tuple[Path, list[str]]:
    """Write (or reuse) the synthetic test set; returns its folder and class names."""
    from amnet import synth

    if args.layout:
        subset = args.subset or "test"
        videos, class_names = synth.layout_from_file(args.layout, subset, args.videos)
        key = {"layout": str(layout_path(args.layout).resolve()), "subset": subset}
    else:
        if args.subset:
            raise AMNetError("--subset goes with --layout")
        preset = args.preset or "thumos14"
        class_names = synth.preset_class_names(preset)
        videos = synth.draw_layout(preset, args.videos, args.seed, ["test"])
        key = {"preset": preset}
    key.update({"videos": args.videos, "seed": args.seed, "dim": dim})
    data = work / "data"
    marker = data / "bench_dataset.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == key:
        logger.info("reusing the synthetic test set in %s", data)
        return data, class_names
    if data.exists():
        shutil.rmtree(data)
    synth.write_dataset(
        data,
        videos,
        class_names,
        seed=args.seed,
        dim=dim,
        version=f"amnet-bench {key}",
        progress=not args.quiet,
    )
    marker.write_text(json.dumps(key), encoding="utf-8")
    return data, class_names


def _latency_files(work: Path, lengths: Sequence[int], dim: int, seed: int) -> list[Path]:
    from amnet import synth
    from amnet.annotations import VideoAnnotation
    from amnet.fileio import atomic_save_npy

    folder = work / "latency"
    folder.mkdir(exist_ok=True)
    world = synth.FeatureWorld.create(seed, synth.preset_class_names("tiny"), dim)
    paths = []
    for length in lengths:
        path = folder / f"T{length}_d{dim}_s{seed}.npy"
        if not path.is_file():
            vid = f"latency_{length}"
            video = VideoAnnotation(vid, "test", length * synth.STRIDE / synth.FPS, synth.FPS)
            feats = synth.synthesize_features(video, world, 1.0, synth.video_rng(seed, vid))
            if len(feats) < length:  # rounding of the duration: pad by repeating
                feats = np.resize(feats, (length, dim))
            atomic_save_npy(path, np.ascontiguousarray(feats[:length]))
        paths.append(path)
    return paths


def _input_statistics(data: Path, dim: int, limit: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over (up to ``limit``) synthetic videos."""
    files = sorted((data / "features").glob("*.npy"))[:limit]
    total = np.zeros(dim)
    square = np.zeros(dim)
    count = 0
    for path in files:
        feats = np.load(path).astype(np.float64)
        total += feats.sum(0)
        square += (feats * feats).sum(0)
        count += len(feats)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(square / max(count, 1) - mean * mean, 0.0))
    return mean, std


def _checkpoint_from_config(
    config: str, work: Path, data: Path, class_names: Sequence[str], seed: int
) -> Path:
    import torch

    from amnet.checkpoint import save_checkpoint
    from amnet.config import load_config
    from amnet.model import AMNet

    cfg = load_config(config)
    k = int(cfg["dataset"]["num_classes"])
    names = list(class_names[:k]) + [f"class_{i}" for i in range(len(class_names), k)]
    torch.manual_seed(seed)
    model = AMNet.from_config(cfg)
    mean, std = _input_statistics(data, int(cfg["dataset"]["input_dim"]))
    model.set_input_statistics(torch.from_numpy(mean).float(), torch.from_numpy(std).float())
    path = work / "model.pt"
    save_checkpoint(path, config=cfg, class_names=names, model=model.state_dict(), ema=None)
    return path


def _model_dim(path: Path) -> int:
    """input_dim of a model file, without running it."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from amnet.metadata import read_onnx_metadata

        return int(read_onnx_metadata(path)["input_dim"])
    if suffix in (".plan", ".engine"):
        from amnet.metadata import read_plan_metadata

        return int(read_plan_metadata(path)["input_dim"])
    if suffix in (".pt", ".pth"):
        from amnet.checkpoint import read_checkpoint

        return int(read_checkpoint(path)["config"]["dataset"]["input_dim"])
    from amnet.deploy.backends import backend_name_for

    backend_name_for(path)  # raises the unknown-type error
    raise AssertionError("unreachable")


def _models(
    args: Any,
    wanted: Sequence[str],
    work: Path,
    ckpt: Path | None,
    onnx: Path | None,
    features: Sequence[str] = (),
) -> tuple[dict[str, Path], dict[str, str]]:
    """Model file per backend, and the reason for each backend that cannot run."""
    models: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    plan = (
        Path(args.engine)
        if args.engine and Path(args.engine).suffix in (".plan", ".engine")
        else None
    )
    if ckpt is not None:
        models["torch"] = ckpt
        reason = _torch_bf16_missing(args.device) if "torch-bf16" in wanted else None
        if reason:
            skipped["torch-bf16"] = reason
        else:
            models["torch-bf16"] = ckpt
    else:
        for name in ("torch", "torch-bf16"):
            skipped[name] = "needs a .pt checkpoint (--config or --engine CKPT.pt)"
    if onnx is None and ckpt is not None and {*ONNX_BACKENDS, "tensorrt"} & set(wanted):
        from amnet.export.to_onnx import export_onnx

        logger.info("exporting %s to ONNX", ckpt)
        onnx = export_onnx(
            ckpt, work / "model.onnx", int8="onnxruntime-int8" in wanted, parity=False
        ).path
    if onnx is not None:
        models["onnxruntime"] = onnx
        reason = _openvino_bf16_missing() if "openvino-bf16" in wanted else None
        if reason:
            skipped["openvino-bf16"] = reason
        else:
            models["openvino-bf16"] = onnx
        if "onnxruntime-int8" in wanted:
            from amnet.export.quantize import int8_path_for, quantize_int8
            from amnet.metadata import read_onnx_metadata

            int8 = onnx if "quantization" in read_onnx_metadata(onnx) else int8_path_for(onnx)
            if not int8.is_file():
                int8 = quantize_int8(onnx, work / int8.name)
            models["onnxruntime-int8"] = int8
        static = None
        for name, why in (
            ("openvino-int8", _openvino_missing),
            ("openvino-int8-bf16", _openvino_bf16_missing),
        ):
            if name not in wanted:
                continue
            reason = why()
            if reason:
                skipped[name] = reason
            else:
                static = static or _static_int8(onnx, work, features)
                models[name] = static
    else:
        for name in ONNX_BACKENDS:
            skipped[name] = "needs an ONNX model (--config, --engine CKPT.pt or MODEL.onnx)"
    if plan is not None:
        models["tensorrt"] = plan
    elif "tensorrt" in wanted and onnx is not None:
        try:
            from amnet.export.to_tensorrt import build_engine

            if args.device != "cuda":
                raise AMNetError("TensorRT runs on CUDA only (use --device cuda)")
            models["tensorrt"], _ = build_engine(onnx, work / "model.plan")
        except AMNetError as exc:
            skipped["tensorrt"] = str(exc)
    elif "tensorrt" in wanted:
        skipped["tensorrt"] = "needs an ONNX model or a .plan"
    return (
        {k: v for k, v in models.items() if k in wanted},
        {k: v for k, v in skipped.items() if k in wanted},
    )


def _static_int8(onnx: Path, work: Path, features: Sequence[str]) -> Path:
    """The static INT8 (QDQ) model of ``onnx``: ``onnx`` itself or its sibling when static,
    else quantized here, calibrated on the benchmark's features."""
    from amnet.export.quantize import calibration_windows, int8_path_for, quantize_int8_static
    from amnet.fileio import file_sha256, load_features
    from amnet.metadata import read_onnx_metadata

    meta = read_onnx_metadata(onnx)
    if meta.get("quantization", "").startswith("static"):
        return onnx
    sibling = int8_path_for(onnx)
    if sibling.is_file() and read_onnx_metadata(sibling).get("quantization", "").startswith(
        "static"
    ):
        return sibling
    out = work / f"{onnx.name[: -len('.onnx')]}.static-int8.onnx"
    if out.is_file() and read_onnx_metadata(out).get("source_sha256") == file_sha256(onnx):
        return out
    videos = (load_features(path, meta["input_dim"]) for path in features)
    windows = calibration_windows(
        videos, meta["max_seq_len"], meta["chunk_overlap"], BENCH_CALIBRATION_WINDOWS,
        bool(meta.get("force_upsampling", False)),
    )  # fmt: skip
    logger.info("quantizing %s statically (%d calibration windows)", onnx, len(windows))
    return quantize_int8_static(onnx, out, windows)


def _torch_bf16_missing(device: str) -> str | None:
    """Why PyTorch cannot run in bf16 on ``device`` here (None: it can)."""
    import torch

    from amnet.deploy.backend_torch import _has_bf16

    if device == "cuda" and not torch.cuda.is_available():
        return None  # the torch row fails with the reason; no second message
    if not _has_bf16(torch, device):
        return f"this {device.upper()} has no bfloat16 arithmetic"
    return None


def _openvino_missing() -> str | None:
    """Why OpenVINO cannot run here (None: it can)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "needs OpenVINO (the [openvino] extra)"
    return None


def _openvino_bf16_missing() -> str | None:
    """Why OpenVINO cannot run in bf16 here (None: it can)."""
    reason = _openvino_missing()
    if reason:
        return reason
    import openvino

    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "this CPU has no bfloat16 arithmetic"
    return None


def _agreement(reference: Path, other: Path, top: int = 10) -> float:
    """Share of the reference's top detections per video reproduced by ``other``."""
    ref = json.loads(reference.read_text(encoding="utf-8"))["results"]
    oth = json.loads(other.read_text(encoding="utf-8"))["results"]
    matched = total = 0
    for vid, entries in ref.items():
        candidates = oth.get(vid, [])
        for entry in entries[:top]:
            total += 1
            s, e = entry["segment"]
            for cand in candidates:
                if cand["label_id"] != entry["label_id"]:
                    continue
                cs, ce = cand["segment"]
                inter = max(0.0, min(e, ce) - max(s, cs))
                union = max(e, ce) - min(s, cs)
                if (
                    union > 0
                    and inter / union >= 0.9
                    and abs(cand["score"] - entry["score"]) <= 0.01
                ):
                    matched += 1
                    break
    return matched / total if total else 1.0


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("–" if value is None else format(value, fmt) if fmt else str(value))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *body])


WORK_MARK = ".amnet-bench-work"


def _claim_work_folder(work: Path) -> None:
    """A run replaces what runs before it wrote in ``--work`` (data, models, results), so a
    folder holding anything else is refused: no file of the user's is removed or replaced."""
    if work.exists() and not work.is_dir():
        raise AMNetError(f"{work}: --work must be a folder")
    if work.is_dir() and not (work / WORK_MARK).is_file():
        theirs = sorted(p.name for p in work.iterdir() if p.name != ".amnet-bench.lock")
        if theirs:
            raise AMNetError(
                f"{work}: holds files amnet-bench did not write ({', '.join(theirs[:3])}"
                f"{', ...' if len(theirs) > 3 else ''}); give a new or empty --work folder"
            )
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_MARK).write_text(
        "amnet-bench's work folder: the next run replaces its data, models and results\n",
        encoding="utf-8",
    )


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if not (args.config or args.engine):
        raise AMNetError("give --config CFG or --engine MODEL")
    wanted = _parse_backends(args.backends)
    lengths = _parse_lengths(args.latency)
    if args.videos is not None and args.videos < 1:
        raise AMNetError(f"--videos must be >= 1, got {args.videos}")
    if args.threads is not None and args.threads < 1:
        raise AMNetError(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.seed < 2**32:
        raise AMNetError(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    if args.repeats < 1:
        raise AMNetError(f"--repeats must be >= 1, got {args.repeats}")
    if args.rounds < 1:
        raise AMNetError(f"--rounds must be >= 1, got {args.rounds}")
    if args.layout and args.preset:
        raise AMNetError("give either --layout or --preset, not both")

    temporary = args.work is None
    work = Path(tempfile.mkdtemp(prefix="amnet-bench-")) if temporary else Path(args.work)
    _claim_work_folder(work)
    # Two runs in one work folder would write each other's data and models, and time each other.
    busy = (
        f"{work}: another amnet-bench is using this work folder; wait for it or give another --work"
    )
    try:
        with exclusive_lock(work / ".amnet-bench.lock", busy):
            return _bench(args, wanted, lengths, work.resolve())
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


def _bench(args: Any, wanted: list[str], lengths: list[int], work: Path) -> int:
    # Absolute: the workers run inside the work folder.
    engine = Path(args.engine).resolve() if args.engine else None
    if engine is not None:
        if not engine.is_file():
            raise AMNetError(f"{engine}: model file not found")
        dim = _model_dim(engine)
    else:
        from amnet.config import load_config

        dim = int(load_config(args.config)["dataset"]["input_dim"])
    data, class_names = _dataset(args, work, dim)
    features = sorted(str(p) for p in (data / "features").glob("*.npy"))

    ckpt = onnx = None
    if args.config:
        ckpt = _checkpoint_from_config(args.config, work, data, class_names, args.seed)
    elif engine is not None and engine.suffix.lower() in (".pt", ".pth"):
        ckpt = engine
    elif engine is not None and engine.suffix.lower() == ".onnx":
        onnx = engine
    models, skipped = _models(args, wanted, work, ckpt, onnx, features)
    latency_paths = [str(p) for p in _latency_files(work, lengths, dim, args.seed)]

    latency: list[dict[str, Any]] = []
    startup: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    bases: dict[str, dict[str, Any]] = {}
    for name in wanted:
        if name not in models:
            logger.warning("%s: skipped (%s)", name, skipped.get(name, "not available"))
            continue
        bases[name] = {
            "model": str(Path(models[name]).resolve()),
            "device": "cuda" if name == "tensorrt" else args.device,
            "threads": args.threads,
            "options": BACKEND_OPTIONS.get(name, {}),
        }

    # Throughput in rounds, the backends taking turns (A B C, A B C, ...), so that a change in
    # the machine's load hits every backend alike; a reference matmul rate before and after.
    # Each backend has one process for its rounds and its latency runs (_Worker).
    workers: dict[str, _Worker] = {}
    try:
        gflops = [_matmul_gflops(args.threads)]
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in bases}
        for index in range(args.rounds):
            for name, base in bases.items():
                if name in failed:
                    continue
                logger.info(
                    "%s: throughput over %d videos (round %d/%d)",
                    name, len(features), index + 1, args.rounds,
                )  # fmt: skip
                spec = {**base, "mode": "throughput", "features": features,
                        "results": str(work / f"results_{name}.json")}  # fmt: skip
                try:
                    if name not in workers:
                        workers[name] = _Worker(work, name)
                    rounds[name].append(workers[name].ask(spec))
                except AMNetError as exc:
                    failed[name] = str(exc)
                    logger.warning("%s: failed (%s)", name, exc)
        gflops.append(_matmul_gflops(args.threads))
        matmul = statistics.fmean(gflops)
        results: list[dict[str, Any]] = []
        for name, runs in rounds.items():
            if name in failed or not runs:
                continue
            best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median round
            row = {"backend": name, **best, "rounds": [r["seconds"] for r in runs]}
            row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            row["snippets_per_s_per_gflops"] = row["snippets_per_s"] / matmul
            results.append(row)

        for name, base in bases.items():
            if name in failed:
                continue
            try:
                if latency_paths:
                    logger.info("%s: latency at T = %s", name, ",".join(map(str, lengths)))
                    spec = {**base, "mode": "latency", "latency": latency_paths,
                            "repeats": args.repeats}  # fmt: skip
                    if name not in workers:
                        workers[name] = _Worker(work, name)
                    answer = workers[name].ask(spec)
                    latency.extend({"backend": name, **r} for r in answer["latency"])
                if name in workers:  # its memory back before the next backend's runs
                    worker = workers.pop(name)
                    worker.close()
                    if worker.startup is not None:
                        startup.append({"backend": name, **worker.startup})
            except AMNetError as exc:
                failed[name] = str(exc)
                logger.warning("%s: failed (%s)", name, exc)
                results = [r for r in results if r["backend"] != name]
    except BaseException:  # Ctrl-C, SIGTERM or a failure: the workers' runs are not wanted
        for worker in workers.values():
            worker.close(abort=True)
        raise
    else:
        for worker in workers.values():
            worker.close()

    torch_row = next((r for r in results if r["backend"] == "torch"), None)
    for row in results:
        if torch_row is not None:
            row["speedup"] = torch_row["seconds"] / row["seconds"] if row["seconds"] > 0 else None
            row["rss_ratio"] = row["peak_rss_mb"] / torch_row["peak_rss_mb"]
            row["agree_top10"] = _agreement(
                work / "results_torch.json", work / f"results_{row['backend']}.json"
            )
    setup = {
        "videos": len(features),
        "snippets": results[0]["snippets"] if results else None,
        "dim": dim,
        "device": args.device,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "matmul_gflops": matmul,
        "matmul_gflops_before_after": gflops,
        "model": str(args.config or args.engine),
    }
    _print_report(results, {**skipped, **failed}, latency, startup, setup, args.json)
    if failed and not args.keep_going:
        name, why = next(iter(failed.items()))
        raise AMNetError(
            f"{len(failed)} backend(s) failed, first {name}: {why} (--keep-going reports the rest "
            "and exits 0)"
        )
    if not results:
        raise AMNetError("no backend was measured (see the failed or skipped backends above)")
    return 0


def _print_report(
    results: list[dict[str, Any]],
    skipped: Mapping[str, str],
    latency: list[dict[str, Any]],
    startup: list[dict[str, Any]],
    setup: Mapping[str, Any],
    as_json: bool,
) -> None:
    print(
        f"## amnet-bench: {setup['videos']} videos, {setup['snippets']} snippets, "
        f"model {setup['model']}, device {setup['device']}, threads {setup['threads'] or 'default'}"
        f" ({setup['cpu_count']} CPUs); fp32 matmul {setup['matmul_gflops']:.1f} GFLOP/s; "
        f"median of {setup['rounds']} interleaved round(s)"
    )
    print()
    print(
        _table(
            results,
            [
                ("backend", "backend", ""),
                ("seconds", "seconds", ".2f"),
                ("snippets_per_s", "snippets/s", ".0f"),
                ("snippets_per_s_per_gflops", "snippets/s per GFLOP/s", ".2f"),
                ("speedup", "× torch", ".2f"),
                ("peak_rss_mb", "peak RSS MB", ".0f"),
                ("rss_ratio", "RSS / torch", ".2f"),
                ("load_s", "load s", ".2f"),
                ("agree_top10", "top-10 agree", ".2f"),
            ],
        )
    )
    if latency:
        print()
        print(
            _table(
                latency,
                [
                    ("backend", "backend", ""),
                    ("snippets", "T", "d"),
                    ("median_s", "median s", ".3f"),
                    ("min_s", "min s", ".3f"),
                    ("runs", "runs", "d"),
                ],
            )
        )
    if startup:
        print()
        print(
            _table(
                startup,
                [
                    ("backend", "backend", ""),
                    ("import_s", "import amnet.deploy s", ".3f"),
                    ("construct_s", "Detector() s", ".3f"),
                    ("rss_mb", "RSS after MB", ".0f"),
                    ("torch_imported", "torch imported", ""),
                ],
            )
        )
    for name, reason in skipped.items():
        print(f"\nskipped {name}: {reason}")
    if as_json:
        payload = {
            "results": results,
            "skipped": [{"backend": k, "reason": v} for k, v in skipped.items()],
            "latency": latency,
            "startup": startup,
            "setup": dict(setup),
        }
        print(json.dumps(payload))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
