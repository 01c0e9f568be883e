"""Build a TensorRT engine from an exported AMNet ONNX graph.

    python export/to_tensorrt.py --onnx model.onnx --out model.plan [--fp16] [--min-len 1]
        [--opt-len N] [--max-len N] [--max-batch N] [--workspace-gb N]
    python -m amnet.export.to_tensorrt ...        (same thing, as a module)

One optimization profile covers both inputs over batch and time: ``features`` from
``[1, min_len, C]`` to ``[max_batch, max_len, C]`` and ``lengths`` from ``[1]`` to
``[max_batch]``. ``max_len`` defaults to the model's ``max_seq_len`` (the chunk size, which no
chunk exceeds) and ``opt_len`` to ``max_len``: full chunks are the most expensive calls, so the
kernels are tuned for them. Beside the plan, ``<plan>.json`` carries the ONNX metadata plus the
build settings (see :mod:`amnet.metadata`). Both files are written atomically.

The ONNX graph is checked statically first (:mod:`amnet.export.trt_compat`), so an
incompatible graph is refused on any machine; the build itself needs the ``tensorrt`` package
and a visible CUDA GPU, and refuses in one line without them.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a script (the file itself): Python put this folder first on sys.path. Drop it so
    # that every import resolves to installed packages (`python export/to_tensorrt.py` at the top
    # of the repository is the launcher users run).
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import argparse
import ctypes
import datetime
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from amnet.errors import AMNetError
from amnet.metadata import INPUT_NAMES

log = logging.getLogger("amnet.export.to_tensorrt")

PROG = "to_tensorrt"
DEFAULT_MAX_BATCH = 4  # amnet.inference.predict_chunks runs up to 4 chunks per call
DEFAULT_WORKSPACE_GB = 4.0

Shape = tuple[int, ...]


def profile_shapes(
    input_dim: int,
    max_seq_len: int,
    min_len: int = 1,
    opt_len: int | None = None,
    max_len: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = 1,
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The optimization profile: per input name its ``(min, opt, max)`` shapes.

    ``max_len`` defaults to ``max_seq_len`` and ``opt_len`` to ``max_len``. Raises AMNetError
    naming the option when the lengths are not ``1 <= min <= opt <= max <= max_seq_len`` or the
    batch sizes are not ``1 <= opt_batch <= max_batch``.
    """
    max_len = max_seq_len if max_len is None else max_len
    opt_len = max_len if opt_len is None else opt_len
    # --max-len before --opt-len: a bad --max-len is also the default --opt-len.
    for flag, value in (
        ("--min-len", min_len),
        ("--max-len", max_len),
        ("--opt-len", opt_len),
        ("--max-batch", max_batch),
        ("--opt-batch", opt_batch),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise AMNetError(f"{flag} must be an integer >= 1, got {value!r}")
    if max_len > max_seq_len:
        raise AMNetError(
            f"--max-len {max_len} exceeds the model's max_seq_len {max_seq_len} (the chunk size)"
        )
    if not min_len <= opt_len <= max_len:
        raise AMNetError(
            f"lengths must satisfy --min-len <= --opt-len <= --max-len, got "
            f"{min_len}, {opt_len}, {max_len}"
        )
    if opt_batch > max_batch:
        raise AMNetError(f"--opt-batch {opt_batch} exceeds --max-batch {max_batch}")
    c = int(input_dim)
    return {
        "features": ((1, int(min_len), c), (int(opt_batch), int(opt_len), c), (int(max_batch), int(max_len), c)),
        "lengths": ((1,), (int(opt_batch),), (int(max_batch),)),
    }  # fmt: skip


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or AMNetError (one line) when it cannot be imported."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise AMNetError(
            f"TensorRT is not available (import tensorrt failed: {detail}); building an engine "
            "needs the tensorrt package and an NVIDIA GPU"
        ) from None
    return tensorrt


def cuda_device_count() -> int:
    """Number of CUDA GPUs the driver reports (honours CUDA_VISIBLE_DEVICES); 0 without a driver.

    Asks the driver library directly, so that neither torch nor cuda-python is needed.
    """
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        try:
            if lib.cuInit(0) != 0:
                return 0
            count = ctypes.c_int(0)
            if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except AttributeError:
            return 0
        return int(count.value)
    return 0


def require_cuda_gpu() -> None:
    if cuda_device_count() < 1:
        raise AMNetError(
            "no CUDA GPU is visible (check the NVIDIA driver and CUDA_VISIBLE_DEVICES); "
            "TensorRT engines are built on the GPU they will run on"
        )


def check_precision_support(trt: Any, fp16: bool) -> None:
    """``--fp16`` on an fp32 graph sets TensorRT 10's FP16 builder flag (weak typing: TensorRT
    may pick fp16 kernels for fp32 layers). TensorRT 11 removed that flag: its networks are
    strongly typed, so the graph's own types decide, and an fp16 engine comes from the fp16
    graph (``amnet-export onnx --fp16``)."""
    if fp16 and not hasattr(trt.BuilderFlag, "FP16"):
        raise AMNetError(
            f"--fp16: TensorRT {trt.__version__} has no FP16 builder flag (its networks are "
            "strongly typed: the graph's types decide); build the fp16 graph that "
            "`amnet-export onnx --fp16` writes (model.fp16.onnx), without --fp16"
        )


def _network_flags(trt: Any, strongly_typed: bool = False) -> int:
    """Creation flags: strongly typed for an fp16 graph (its types are the precision, on
    TensorRT 10 as on 11, where every network is)."""
    flags = 0
    # TensorRT 10 and 11 networks are always explicit-batch (the flag is deprecated there and
    # implicit batch is gone); 8.x still needs the flag for dynamic shapes.
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _parser_error_text(error: Any) -> str:
    parts = [str(error.desc()).strip()]
    node = error.node()
    if node is not None and int(node) >= 0:
        name = error.node_name() if hasattr(error, "node_name") else ""
        op = error.node_operator() if hasattr(error, "node_operator") else ""
        parts.append(
            f"node {int(node)}" + (f" {name}" if name else "") + (f" ({op})" if op else "")
        )
    parts.append(f"code {error.code()}")
    return ", ".join(p for p in parts if p)


def _trt_logger(trt: Any, verbose: bool) -> Any:
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def _build_serialized(
    trt: Any,
    onnx_path: Path,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    fp16: bool,
    tf32: bool,
    workspace_gb: float,
    verbose: bool,
    strongly_typed: bool = False,
) -> tuple[Any, float]:
    """Parse ``onnx_path`` and build the serialized engine; returns it and the seconds taken."""
    start = time.perf_counter()
    logger = _trt_logger(trt, verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
        if len(errors) > 1:  # the error line names the first; list them all above it
            for i, text in enumerate(errors, 1):
                log.error("ONNX parser error %d/%d: %s", i, len(errors), text)
        first = errors[0] if errors else "no details"
        raise AMNetError(
            f"{onnx_path}: TensorRT's ONNX parser reported {len(errors)} error(s), first: {first}"
        )
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(INPUT_NAMES):
        raise AMNetError(
            f"{onnx_path}: expected inputs {', '.join(INPUT_NAMES)}, found {', '.join(sorted(inputs))}"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if not tf32:
        # TensorRT lets fp32 layers use TF32 tensor cores by default (10-bit mantissa); an
        # "fp32" engine here means fp32, so that it meets the same parity as ONNX Runtime.
        config.clear_flag(trt.BuilderFlag.TF32)
    if fp16 and not strongly_typed:  # a strongly typed network takes its types from the graph
        if not getattr(builder, "platform_has_fast_fp16", True):
            log.warning("this GPU has no fast fp16; building with the FP16 flag anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    log.info(
        "building a TensorRT %s engine (%s) from %s",
        trt.__version__,
        "fp16, strongly typed" if strongly_typed else ("fp16" if fp16 else "fp32"),
        onnx_path,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise AMNetError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    seconds = time.perf_counter() - start
    return serialized, seconds


def build_engine(
    onnx_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    fp16: bool = False,
    min_len: int = 1,
    opt_len: int | None = None,
    max_len: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = 1,
    workspace_gb: float = DEFAULT_WORKSPACE_GB,
    tf32: bool = False,
    verbose: bool = False,
) -> tuple[Path, Path]:
    """Build and write ``out`` (default: ``onnx_path`` with ``.plan``) and its ``.plan.json``.

    Returns both paths. Raises AMNetError (one line) on bad arguments, a graph TensorRT 10
    cannot import, missing TensorRT or GPU, parser errors (each also logged) or a failed build;
    no output file is left behind then.
    """
    from amnet.export.trt_compat import check_tensorrt_compatibility
    from amnet.fileio import check_out_path, file_sha256, publish, temp_beside
    from amnet.metadata import (
        plan_sidecar_path,
        read_onnx_metadata,
        write_plan_metadata,
    )

    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else onnx_path.with_suffix(".plan")
    if not workspace_gb > 0:
        raise AMNetError(f"--workspace-gb must be > 0, got {workspace_gb}")
    meta = read_onnx_metadata(onnx_path)
    shapes = profile_shapes(
        meta["input_dim"], meta["max_seq_len"], min_len, opt_len, max_len, max_batch, opt_batch
    )
    problems = check_tensorrt_compatibility(onnx_path)
    if problems:
        if len(problems) > 1:  # the error line names the first; list them all above it
            for problem in problems:
                log.error("%s: %s", onnx_path, problem)
        raise AMNetError(
            f"{onnx_path}: TensorRT 10 cannot import this graph "
            f"({len(problems)} problem(s)): {problems[0]}"
        )
    check_out_path(out, [onnx_path], suffixes=(".plan", ".engine"))
    check_out_path(plan_sidecar_path(out), [onnx_path])
    trt = import_tensorrt()
    fp16_graph = meta.get("precision") == "fp16"  # amnet-export onnx --fp16
    if not fp16_graph:
        check_precision_support(trt, fp16)
    require_cuda_gpu()

    # Created before the (long) build: it is the real test that the folder is writable.
    plan_tmp = temp_beside(out)
    sidecar = plan_sidecar_path(out)
    sidecar_written = False
    try:
        serialized, seconds = _build_serialized(
            trt, onnx_path, shapes, fp16, tf32, workspace_gb, verbose, strongly_typed=fp16_graph
        )

        engine_info = {
            "tensorrt_version": str(trt.__version__),
            "precision": "fp16" if fp16 or fp16_graph else "fp32",
            "strongly_typed": fp16_graph,
            "tf32": bool(tf32),
            "profile": {name: {"min": lo, "opt": opt, "max": hi} for name, (lo, opt, hi) in shapes.items()},
            "min_len": shapes["features"][0][1],
            "opt_len": shapes["features"][1][1],
            "max_len": shapes["features"][2][1],
            "opt_batch": shapes["lengths"][1][0],
            "max_batch": shapes["lengths"][2][0],
            "workspace_gb": float(workspace_gb),
            "device": _gpu_name(),
            "onnx_file": onnx_path.name,
            "onnx_sha256": file_sha256(onnx_path),
            "build_seconds": round(seconds, 2),
            "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        with open(plan_tmp, "wb") as handle:
            handle.write(memoryview(serialized))
        write_plan_metadata(out, meta, engine_info)
        sidecar_written = True
        publish(plan_tmp, out)
    except BaseException:
        plan_tmp.unlink(missing_ok=True)
        if sidecar_written:  # a sidecar without its plan would describe nothing
            sidecar.unlink(missing_ok=True)
        raise
    return out, sidecar


def _gpu_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # the name is informational only
        pass
    return "unknown"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from amnet.cli.common import OneLineParser

    parser = OneLineParser(
        prog=prog, description="Build a TensorRT engine from an AMNet ONNX export."
    )
    parser.add_argument("--onnx", required=True, help="ONNX model written by to_onnx")
    parser.add_argument("--out", help="engine file (default: the ONNX path with .plan)")
    parser.add_argument("--fp16", action="store_true", help="allow fp16 kernels")
    parser.add_argument("--min-len", type=int, default=1, help="shortest chunk (default 1)")
    parser.add_argument("--opt-len", type=int, help="chunk length to tune for (default: max-len)")
    parser.add_argument("--max-len", type=int, help="longest chunk (default: max_seq_len)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"largest batch (default {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument("--opt-batch", type=int, default=1, help="batch to tune for (default 1)")
    parser.add_argument(
        "--workspace-gb",
        type=float,
        default=DEFAULT_WORKSPACE_GB,
        help=f"builder workspace (default {DEFAULT_WORKSPACE_GB:g})",
    )
    parser.add_argument(
        "--tf32", action="store_true", help="let fp32 layers use TF32 (faster, less exact)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no report on success")
    parser.add_argument("-v", "--verbose", action="store_true", help="verbose TensorRT log")
    return parser


def _main(argv: list[str] | None, prog: str = PROG) -> int:
    from amnet.cli.common import setup_logging

    args = build_parser(prog).parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    plan, sidecar = build_engine(
        args.onnx,
        args.out,
        fp16=args.fp16,
        min_len=args.min_len,
        opt_len=args.opt_len,
        max_len=args.max_len,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        workspace_gb=args.workspace_gb,
        tf32=args.tf32,
        verbose=args.verbose,
    )
    if not args.quiet:
        print(f"wrote {plan} ({plan.stat().st_size / 2**20:.1f} MiB) and {sidecar}")
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    from amnet.cli.common import run_cli

    return run_cli(lambda args: _main(args, prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
