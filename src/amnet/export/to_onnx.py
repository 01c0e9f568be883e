"""Export an AMNet checkpoint to ONNX (one chunk), with metadata and a parity check.

    python export/to_onnx.py --ckpt ckpt.pt --out model.onnx [--opset 17] [--ema|--no-ema] [--int8]
    python -m amnet.export.to_onnx ...            (same thing, as a module)

The graph computes ``AMNet.predict`` for one chunk: inputs ``features [B, T, C] float32`` and
``lengths [B] int64``, outputs ``scores [B, P, K]`` and ``segments [B, P, 2]``, with B and T
dynamic (1 <= T <= max_seq_len; P follows T). After export: ``onnx.checker``, the metadata
(:mod:`amnet.metadata`), a static TensorRT 10 compatibility check (warnings only here;
``to_tensorrt`` refuses), then ONNX Runtime against PyTorch at several lengths and batch sizes.
The output file appears only when every check passed (written to a temporary file, then renamed).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` with ``dynamic_axes``.
The torch.export-based exporter cannot keep T dynamic for this model: the pyramid's point
layout (``padded // 2**l`` points per level) and the pooled tensors' lengths
(``(n - 1) // 2 + 1``) are equal only because ``padded`` is a multiple of ``2**(levels-1)``,
which its symbolic shapes cannot prove, so it specialises T to the example's length.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a script (the file itself): Python put this folder first on sys.path. Drop it so
    # that every import resolves to installed packages (`python export/to_onnx.py` at the top
    # of the repository is the launcher users run).
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import argparse
import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amnet import __version__
from amnet.errors import AMNetError
from amnet.metadata import INPUT_NAMES, OUTPUT_NAMES

log = logging.getLogger("amnet.export.to_onnx")

PROG = "to_onnx"
# Opset 17 is the first with a native LayerNormalization (one TensorRT layer instead of a
# decomposition, better in fp16) and below opset 20, from which the exporter emits Gelu, an
# operator older TensorRT 10 parsers lack. 17..20 all pass the parity checks here.
DEFAULT_OPSET = 17
# The graph pads by computed amounts and builds index ranges (Pad and Range take tensors from
# opset 11), so the export needs 11; 20 is the newest every TensorRT 10 parser reads.
MIN_OPSET = 11
# Static INT8 quantizes weights per output channel: QuantizeLinear's axis is opset 13.
MIN_STATIC_INT8_OPSET = 13
SCORES_ATOL = 1e-4  # absolute, on probabilities
SEGMENTS_ATOL = 1e-3  # snippets, on valid points only
HELD_OUT_WINDOWS = 2  # training windows that static INT8's parity is reported on
# The fp16 graph against PyTorch fp32: the tolerances of an fp16 TensorRT engine (a head offset
# of a few units times a level stride of up to 32 loses a fraction of a snippet to rounding).
FP16_SCORES_ATOL = 5e-2
FP16_SEGMENTS_ATOL = 2.0


class ParityError(AMNetError):
    """ONNX Runtime disagrees with PyTorch beyond the tolerances."""


@dataclass
class ParityRow:
    batch: int
    seq_len: int
    lengths: list[int]
    scores_diff: float
    segments_diff: float
    ok: bool


@dataclass
class ExportResult:
    path: Path
    opset: int
    metadata: dict[str, Any]
    parity: list[ParityRow] = field(default_factory=list)
    trt_problems: list[str] = field(default_factory=list)
    int8_path: Path | None = None
    int8_parity: list[ParityRow] = field(default_factory=list)
    fp16_path: Path | None = None
    fp16_parity: list[ParityRow] = field(default_factory=list)
    seconds: float = 0.0


def parity_cases(max_seq_len: int) -> list[list[int]]:
    """Per case the valid lengths of a batch (its T is the longest): single videos of length 1,
    37 (not a multiple of the pyramid's 32), 256 and max_seq_len, and two batches of 3 mixed
    lengths."""
    singles = sorted({t for t in (1, 37, 256, max_seq_len) if t <= max_seq_len})
    short = min(37, max_seq_len)
    cases = [[t] for t in singles]
    cases.append([short, max(1, short * 2 // 3), 1])
    cases.append([max_seq_len, max(1, (max_seq_len * 3) // 5), max(1, max_seq_len // 4 + 1)])
    return cases


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:240]


def fp16_path_for(path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.fp16{path.suffix}")


def _chunk_module(model: Any, half: bool = False) -> Any:
    """``half``: the model in fp16 behind fp32 inputs and outputs (the attention computes its
    scores and softmax in fp32 whatever its inputs, DESIGN §5)."""
    from torch import nn

    class ChunkGraph(nn.Module):
        """What the graph computes: ``AMNet.predict`` on one chunk."""

        def __init__(self, inner: Any) -> None:  # an AMNet
            super().__init__()
            self.inner = inner.half() if half else inner

        def forward(self, features: Any, lengths: Any) -> Any:
            if not half:
                return self.inner.predict(features, lengths)
            scores, segments = self.inner.predict(features.half(), lengths)
            return scores.float(), segments.float()

    return ChunkGraph(model).eval()


@contextlib.contextmanager
def _silenced_stdout() -> Iterator[None]:
    """Discard what is written to file descriptor 1 meanwhile. On a failure the TorchScript
    exporter dumps its whole IR graph (megabytes) to stdout from C++, which Python's
    ``redirect_stdout`` cannot catch; the error itself still surfaces as an exception."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable stdout: nothing to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _export_graph(
    model: Any, input_dim: int, max_seq_len: int, opset: int, path: Path, half: bool = False
) -> None:
    import torch

    # Example shapes only seed the trace: T is dynamic. A T that is not a multiple of the
    # pyramid's padding and two different lengths keep the trace from baking in either.
    t = max(2, min(max_seq_len, 100))
    features = torch.rand(2, t, input_dim)
    lengths = torch.tensor([t, t // 2 + 1], dtype=torch.int64)
    dynamic_axes = {
        INPUT_NAMES[0]: {0: "batch", 1: "time"},
        INPUT_NAMES[1]: {0: "batch"},
        "scores": {0: "batch", 1: "points"},
        "segments": {0: "batch", 1: "points"},
    }
    with warnings.catch_warnings(), torch.no_grad(), _silenced_stdout():
        # The TorchScript exporter warns about its deprecation and about the shape checks
        # inside the attention entry point, which are skipped while exporting.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _chunk_module(model, half),
            (features, lengths),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )


def _fold_constants(path: Path) -> Any:
    """The traced graph at ``path`` folded with ONNX Runtime's basic optimisations: constants
    folded, redundant nodes removed, plain ONNX ops only. The trace leaves thousands of shape
    computations (the tiny model: 4,480 nodes, 1,792 after); every runtime would fold them at
    each load, and the quantizer's passes grow with the square of the node count. If ONNX
    Runtime cannot load the graph or the result is anything but plain ONNX, the traced graph is
    kept (the parity check then reports what ONNX Runtime makes of it). Returns the graph
    (an ``onnx.ModelProto``) without writing it: the caller adds the metadata and writes once,
    since reading and writing the paper-size model's weights costs about half a second each."""
    import onnx
    import onnxruntime as ort

    from amnet.fileio import temp_beside

    folded = temp_beside(path)
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        try:
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ONNX Runtime raises its own exception types
            log.warning("ONNX Runtime cannot load the exported graph: %s", _first_line(exc))
            return onnx.load(str(path))
        graph = onnx.load(str(folded))
        if any(node.domain not in ("", "ai.onnx") for node in graph.graph.node):
            log.debug("constant folding introduced non-standard ops; the traced graph is kept")
            return onnx.load(str(path))
        # ONNX Runtime declares all the operator sets it knows; keep those the graph uses.
        used = {node.domain for node in graph.graph.node} | {""}
        kept = [o for o in graph.opset_import if o.domain in used]
        del graph.opset_import[:]
        graph.opset_import.extend(kept)
        log.debug("constant folding: %d nodes after", len(graph.graph.node))
        return graph
    finally:
        folded.unlink(missing_ok=True)


def _batch(lengths: Sequence[int], input_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = max(lengths)
    # Non-negative, I3D-like values; padding beyond each length is left random on purpose:
    # the model must ignore it.
    feats = rng.gamma(1.0, 0.15, size=(len(lengths), t, input_dim)).astype(np.float32)
    return feats, np.asarray(lengths, dtype=np.int64)


def compare_outputs(
    ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]
) -> tuple[float, float]:
    """Max |Δ| of scores (everywhere) and of segments (valid points: reference score > 0)."""
    ref_scores, ref_segments = ref
    got_scores, got_segments = got
    if ref_scores.shape != got_scores.shape or ref_segments.shape != got_segments.shape:
        return float("inf"), float("inf")
    scores_diff = float(np.max(np.abs(ref_scores - got_scores), initial=0.0))
    valid = ref_scores.max(axis=-1) > 0
    seg = np.abs(ref_segments - got_segments)[valid]
    return scores_diff, float(np.max(seg, initial=0.0))


def check_parity(
    session: Any,
    model: Any,
    input_dim: int,
    cases: Sequence[Sequence[int]],
    scores_atol: float = SCORES_ATOL,
    segments_atol: float = SEGMENTS_ATOL,
    batches: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> list[ParityRow]:
    """Run ``session`` (ONNX Runtime) and ``model.predict`` (PyTorch) on the same inputs:
    ``batches`` (features, lengths) when given, else random batches of ``cases``' lengths."""
    import torch

    if not batches:
        batches = [_batch(lengths, input_dim, seed=i) for i, lengths in enumerate(cases)]
    rows = []
    for feats, lens in batches:
        lengths = [int(n) for n in lens]
        with torch.no_grad():
            ref = model.predict(torch.from_numpy(feats), torch.from_numpy(lens))
        ref_np = (ref[0].float().numpy(), ref[1].float().numpy())
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: feats, INPUT_NAMES[1]: lens})
        s_diff, g_diff = compare_outputs(ref_np, (got[0], got[1]))
        ok = s_diff <= scores_atol and g_diff <= segments_atol
        rows.append(ParityRow(len(lengths), max(lengths), list(lengths), s_diff, g_diff, ok))
    return rows


def format_parity(rows: Sequence[ParityRow], title: str) -> str:
    lines = [
        title,
        "| B | T | lengths | max |Δ scores| | max |Δ segments| | ok |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.batch} | {r.seq_len} | {','.join(map(str, r.lengths))} | {r.scores_diff:.3g} "
        f"| {r.segments_diff:.3g} | {'yes' if r.ok else 'NO'} |"
        for r in rows
    ]
    return "\n".join(lines)


def opset_range() -> str:
    """The opsets the export takes: what the model needs and what TensorRT 10 reads."""
    from amnet.export.trt_compat import TRT_OPSET_RANGE

    return f"{MIN_OPSET}..{TRT_OPSET_RANGE[1]}"


def export_onnx(
    ckpt: str | os.PathLike,
    out: str | os.PathLike | None = None,
    opset: int = DEFAULT_OPSET,
    use_ema: bool | None = None,
    int8: bool | str = False,
    scores_atol: float = SCORES_ATOL,
    segments_atol: float = SEGMENTS_ATOL,
    parity: bool = True,
    calibration: str | os.PathLike | None = None,
    calibration_windows: int | None = None,
    fp16: bool = False,
) -> ExportResult:
    """Export ``ckpt`` to ``out`` (default: the checkpoint path with ``.onnx``) and verify it.

    Raises AMNetError (one line) on bad input or a failed export, ParityError when ONNX Runtime
    and PyTorch disagree beyond the tolerances; in both cases no output file is left behind.
    With ``int8`` (True or ``"dynamic"``), also writes ``<out stem>.int8.onnx`` (dynamic INT8
    for CPUs, see :mod:`amnet.export.quantize`) whose parity is reported, not enforced; with
    ``"static"``, that file is static INT8 (QDQ) calibrated on ``calibration_windows`` windows of
    the training split of ``calibration`` (a data folder in the checkpoint config's layout).
    With ``fp16``, also writes ``<out stem>.fp16.onnx``: the model in fp16 behind fp32 inputs
    and outputs (what TensorRT 11, whose networks are strongly typed, builds fp16 engines from),
    checked against PyTorch fp32 within fp16 tolerances.
    """
    from amnet.export.trt_compat import check_opset
    from amnet.fileio import StagedFiles, check_out_path

    start = time.perf_counter()
    ckpt = Path(ckpt)
    out = Path(out) if out is not None else ckpt.with_suffix(".onnx")
    reason = check_opset(int(opset))
    if int(opset) < MIN_OPSET:
        reason = f"the model's graph needs opset {MIN_OPSET} or later"
    if reason:
        raise AMNetError(f"--opset {opset}: {reason} (the export takes {opset_range()})")
    # Never onto the checkpoint (symlinks and hard links too), and only as .onnx: the name
    # picks the backend, and a calibration set's annotation file is no place for a model.
    check_out_path(out, [ckpt], suffixes=(".onnx",))
    if not ckpt.is_file():
        raise AMNetError(f"{ckpt}: checkpoint not found")
    if out.resolve() == ckpt.resolve():
        raise AMNetError(f"{out}: the output would overwrite the checkpoint")
    scheme = ("dynamic" if int8 else None) if isinstance(int8, bool) else int8
    if scheme not in (None, "dynamic", "static"):
        raise AMNetError(f"int8 must be dynamic or static, got {int8!r}")
    if (calibration is not None or calibration_windows is not None) and scheme != "static":
        raise AMNetError("a calibration set is for static INT8 only (--int8 static)")
    if scheme == "static" and int(opset) < MIN_STATIC_INT8_OPSET:
        raise AMNetError(
            f"--opset {opset}: static INT8 quantizes per channel, which needs opset "
            f"{MIN_STATIC_INT8_OPSET} or later"
        )
    if scheme:
        from amnet.export.quantize import int8_path_for

        check_out_path(int8_path_for(out), [ckpt])
    if fp16:
        check_out_path(fp16_path_for(out), [ckpt])
    windows = held_out = None
    if scheme == "static":
        if calibration is None:
            raise AMNetError("static INT8 needs calibration features: --calibration DATA_DIR")
        windows, held_out = _calibration_set(ckpt, calibration, calibration_windows)
    # The files asked for appear together or not at all (a failed parity check, a failed
    # quantization, Ctrl-C): each is written to a temporary file, renamed into place at the end.
    staged = StagedFiles()
    try:
        tmp = staged.stage(out)
        result = _export_checked(
            ckpt, out, tmp, int(opset), use_ema, scores_atol, segments_atol, parity
        )
        if fp16:
            result.fp16_path = fp16_path_for(out)
            result.fp16_parity = _export_fp16(
                ckpt,
                result.fp16_path,
                staged.stage(result.fp16_path),
                int(opset),
                use_ema,
                result.metadata,
                parity,
            )
        if scheme:
            result.int8_path = int8_path_for(out)
            int8_tmp = staged.stage(result.int8_path)
            _quantize(tmp, int8_tmp, windows, out)
            if parity:
                from amnet.checkpoint import load_model
                from amnet.deploy.backend_onnx import open_session

                model, _, _ = load_model(ckpt, use_ema=use_ema)
                # Static ranges hold for features like the calibration set's, not for random
                # inputs: its parity is reported on training windows it was not calibrated on.
                result.int8_parity = check_parity(
                    open_session(int8_tmp),
                    model,
                    result.metadata["input_dim"],
                    parity_cases(result.metadata["max_seq_len"]),
                    scores_atol,
                    segments_atol,
                    batches=held_out or windows or (),
                )
        staged.publish()
    except BaseException:
        staged.discard()
        raise
    result.seconds = time.perf_counter() - start
    return result


def _quantize(src: Path, dst: Path, windows: list[Any] | None, out: Path) -> None:
    """INT8 of the float graph ``src``: static (QDQ) when calibration ``windows`` are given,
    else dynamic; ``out`` names the export in the error."""
    from amnet.export.quantize import quantize_int8, quantize_int8_static

    try:
        if windows is not None:
            quantize_int8_static(src, dst, windows)
        else:
            quantize_int8(src, dst)
    except (RuntimeError, ValueError, OSError) as exc:  # ORT's quantizer raises plain errors
        raise AMNetError(
            f"{out}: INT8 quantization failed, nothing was written: {_first_line(exc)}"
        ) from None


def _calibration_set(
    ckpt: Path, data_dir: str | os.PathLike, count: int | None
) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    """``count`` calibration windows for static INT8 from the training split (the config's
    ``train_split``) of ``data_dir``, cut as inference cuts them, and up to
    :data:`HELD_OUT_WINDOWS` more from the same split to report its parity on."""
    from amnet.checkpoint import read_checkpoint
    from amnet.config import config_from_dict
    from amnet.data import make_dataset
    from amnet.export.quantize import DEFAULT_CALIBRATION_WINDOWS, calibration_windows
    from amnet.fileio import load_features

    count = DEFAULT_CALIBRATION_WINDOWS if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AMNetError(f"--calibration-windows must be a positive integer, got {count!r}")
    fields = read_checkpoint(ckpt)
    cfg = config_from_dict(fields["config"], f"{ckpt} (config)")
    data = make_dataset(cfg, data_dir, "train_split", False, fields["class_names"])
    if not data.videos:
        raise AMNetError(f"{data_dir}: the training split has no videos to calibrate on")
    d = cfg["dataset"]
    videos = (load_features(data.feature_path(v.video_id), d["input_dim"]) for v in data.videos)
    windows = calibration_windows(
        videos, d["max_seq_len"], cfg["test_cfg"]["chunk_overlap"], count + HELD_OUT_WINDOWS,
        d["force_upsampling"],
    )  # fmt: skip
    return windows[:count], windows[count:]


def _export_checked(
    ckpt: Path,
    out: Path,
    tmp: Path,
    opset: int,
    use_ema: bool | None,
    scores_atol: float,
    segments_atol: float,
    parity: bool,
) -> ExportResult:
    import onnx

    from amnet.checkpoint import model_from_checkpoint, read_checkpoint, weights_name
    from amnet.deploy.backend_onnx import open_session
    from amnet.export.trt_compat import check_tensorrt_compatibility
    from amnet.fileio import file_sha256
    from amnet.metadata import build_metadata, write_onnx_metadata

    try:
        raw = read_checkpoint(ckpt)
    except AMNetError:
        raise
    except Exception as exc:  # on garbage, the unpickler raises IndexError, KeyError and more
        raise AMNetError(
            f"{ckpt}: not a readable checkpoint ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    weights = weights_name(raw, use_ema)
    model, cfg, class_names = model_from_checkpoint(raw, ckpt, use_ema)
    del raw
    meta = build_metadata(
        cfg,
        class_names,
        checkpoint_sha256=file_sha256(ckpt),
        opset=opset,
        weights=weights,
        amnet_version=__version__,
    )
    input_dim, max_seq_len = meta["input_dim"], meta["max_seq_len"]
    log.debug("exporting %s (%s weights) at opset %d", ckpt, weights, opset)
    try:
        _export_graph(model, input_dim, max_seq_len, opset, tmp)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        raise AMNetError(f"ONNX export at opset {opset} failed: {_first_line(exc)}") from None

    graph = _fold_constants(tmp)
    write_onnx_metadata(graph, meta)
    graph.producer_name, graph.producer_version = "amnet", __version__
    graph.doc_string = "AMNet chunk graph: features [B,T,C], lengths [B] -> scores, segments"
    try:
        onnx.checker.check_model(graph)
    except onnx.checker.ValidationError as exc:
        raise AMNetError(f"exported graph fails onnx.checker: {_first_line(exc)}") from None
    onnx.save(graph, str(tmp))
    result = ExportResult(path=out, opset=opset, metadata=meta)
    result.trt_problems = check_tensorrt_compatibility(graph)
    for problem in result.trt_problems:
        log.warning("TensorRT compatibility: %s", problem)
    del graph
    if parity:
        session = open_session(tmp)
        result.parity = check_parity(
            session, model, input_dim, parity_cases(max_seq_len), scores_atol, segments_atol
        )
        _refuse_failed_parity(
            result.parity, "ONNX Runtime differs from PyTorch", scores_atol, segments_atol, out
        )
    return result


def _refuse_failed_parity(
    rows: Sequence[ParityRow], what: str, scores_atol: float, segments_atol: float, out: Path
) -> None:
    """ParityError naming the worst failed case, when any failed."""
    failed = [r for r in rows if not r.ok]
    if failed:
        worst = max(failed, key=lambda r: (r.scores_diff, r.segments_diff))
        raise ParityError(
            f"{out}: {what} (B={worst.batch}, T={worst.seq_len}: max |Δ scores| "
            f"{worst.scores_diff:.3g} > {scores_atol:g} or |Δ segments| "
            f"{worst.segments_diff:.3g} > {segments_atol:g}); nothing was written"
        )


def _export_fp16(
    ckpt: Path,
    out: Path,
    tmp: Path,
    opset: int,
    use_ema: bool | None,
    meta: dict[str, Any],
    parity: bool,
) -> list[ParityRow]:
    """The fp16 graph of ``ckpt`` into ``tmp`` (checked as the fp32 one is); its parity rows."""
    import onnx

    from amnet.checkpoint import load_model
    from amnet.deploy.backend_onnx import open_session
    from amnet.export.trt_compat import check_tensorrt_compatibility
    from amnet.metadata import write_onnx_metadata

    model, _, _ = load_model(ckpt, use_ema=use_ema)
    try:  # a copy goes to half precision; ``model`` stays the fp32 reference
        _export_graph(
            copy.deepcopy(model), meta["input_dim"], meta["max_seq_len"], opset, tmp, half=True
        )
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        raise AMNetError(f"fp16 ONNX export at opset {opset} failed: {_first_line(exc)}") from None
    graph = _fold_constants(tmp)
    write_onnx_metadata(graph, {**meta, "precision": "fp16"})
    graph.producer_name, graph.producer_version = "amnet", __version__
    graph.doc_string = (
        "AMNet chunk graph in fp16: features [B,T,C], lengths [B] -> scores, segments"
    )
    try:
        onnx.checker.check_model(graph)
    except onnx.checker.ValidationError as exc:
        raise AMNetError(f"fp16 graph fails onnx.checker: {_first_line(exc)}") from None
    onnx.save(graph, str(tmp))
    for problem in check_tensorrt_compatibility(graph):
        log.warning("TensorRT compatibility (fp16 graph): %s", problem)
    del graph
    if not parity:
        return []
    rows = check_parity(
        open_session(tmp),
        model,
        meta["input_dim"],
        parity_cases(meta["max_seq_len"]),
        FP16_SCORES_ATOL,
        FP16_SEGMENTS_ATOL,
    )
    _refuse_failed_parity(
        rows, "the fp16 graph differs from PyTorch fp32", FP16_SCORES_ATOL, FP16_SEGMENTS_ATOL, out
    )
    return rows


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from amnet.cli.common import OneLineParser

    parser = OneLineParser(prog=prog, description="Export an AMNet checkpoint to ONNX with checks.")
    parser.add_argument("--ckpt", required=True, help="AMNet checkpoint (.pt)")
    parser.add_argument("--out", help="output .onnx (default: the checkpoint path with .onnx)")
    parser.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {opset_range()} (default {DEFAULT_OPSET})",
    )
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export the EMA (--ema) or raw (--no-ema) weights (default: the set the "
        "checkpoint's validation chose, EMA when it names none)",
    )
    parser.add_argument(
        "--int8",
        nargs="?",
        const="dynamic",
        choices=("dynamic", "static"),
        help="also write <out>.int8.onnx: dynamic INT8 (the default, no data needed) or static "
        "INT8 (QDQ, calibrated on the training split of --calibration)",
    )
    parser.add_argument(
        "--calibration",
        metavar="DATA_DIR",
        help="features whose training split calibrates static INT8 (the config's layout)",
    )
    parser.add_argument(
        "--calibration-windows",
        type=int,
        metavar="N",
        help="how many inference windows to calibrate on (default 16)",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="also write <out>.fp16.onnx: the model in fp16 behind fp32 inputs and outputs, "
        "for fp16 TensorRT engines (TensorRT 11 builds them from such a graph)",
    )
    parser.add_argument("--scores-atol", type=float, default=SCORES_ATOL, help=argparse.SUPPRESS)
    parser.add_argument(
        "--segments-atol", type=float, default=SEGMENTS_ATOL, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="no report on success (errors and TensorRT operator problems still go to stderr)",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _main(argv: list[str] | None, prog: str = PROG) -> int:
    from amnet.cli.common import setup_logging

    args = build_parser(prog).parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    for name in ("scores_atol", "segments_atol"):
        if not getattr(args, name) >= 0:
            raise AMNetError(f"--{name.replace('_', '-')} must be >= 0")
    try:
        result = export_onnx(
            args.ckpt,
            args.out,
            opset=args.opset,
            use_ema=args.ema,
            int8=args.int8 or False,
            scores_atol=args.scores_atol,
            segments_atol=args.segments_atol,
            calibration=args.calibration,
            calibration_windows=args.calibration_windows,
            fp16=args.fp16,
        )
    except ParityError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    if args.quiet:
        for problem in result.trt_problems:
            print(f"{prog}: warning: TensorRT 10 compatibility: {problem}", file=sys.stderr)
        return 0
    meta = result.metadata
    size_mb = result.path.stat().st_size / 2**20
    print(
        f"wrote {result.path} ({size_mb:.1f} MiB, opset {result.opset}, {meta['weights']} "
        f"weights, {meta['num_classes']} classes, T <= {meta['max_seq_len']}) "
        f"in {result.seconds:.1f} s"
    )
    print("onnx.checker: ok")
    if result.trt_problems:
        print("TensorRT 10 compatibility: PROBLEMS")
        for problem in result.trt_problems:
            print(f"  - {problem}")
    else:
        print("TensorRT 10 compatibility: ok (opset in range, all operators supported)")
    print(format_parity(result.parity, "parity, ONNX Runtime (CPU) vs PyTorch, fp32:"))
    if result.fp16_path is not None:
        print(f"wrote {result.fp16_path} (fp16, fp32 inputs and outputs)")
        if result.fp16_parity:
            print(format_parity(result.fp16_parity, "fp16 graph (ONNX Runtime) vs PyTorch fp32:"))
    if result.int8_path is not None:
        print(f"wrote {result.int8_path} ({args.int8} INT8 for CPUs)")
        if result.int8_parity:
            where = "training windows" if args.int8 == "static" else "random inputs"
            print(
                format_parity(
                    result.int8_parity, f"INT8 vs PyTorch fp32 on {where} (informational):"
                )
                .replace("| yes |", "| - |")
                .replace("| NO |", "| - |")
            )
    return 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    from amnet.cli.common import run_cli

    return run_cli(lambda args: _main(args, prog), argv, prog)


if __name__ == "__main__":
    sys.exit(main())
