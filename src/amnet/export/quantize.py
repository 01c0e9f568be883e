"""Dynamic INT8 quantization of an exported AMNet graph, for CPU inference with ONNX Runtime.

Weights are stored as int8; activations are quantized on the fly per call
(``onnxruntime.quantization.quantize_dynamic``), so no calibration data is needed.

What gets quantized, and why (measured with ``benchmarks/bench_int8.py`` and single-chunk
timings on an AVX-512 VNNI CPU, one thread):

- MatMul with a constant weight (every Linear layer): ``MatMulInteger``, the speed-up.
- The 1-D convolutions (embedding, actionness head, classification/regression heads, about
  half of the model's FLOPs): ONNX Runtime's ``ConvInteger`` kernel is slower than its float
  Conv, so quantizing Conv directly (per-tensor or per-channel) makes the model slower. With
  ``conv_as_matmul`` each stride-1, same-padded Conv is first rewritten, exactly in fp32, as
  Pad -> k shifted Slices -> Concat -> MatMul (the im2col form), whose MatMul then quantizes
  like the others.

The attention products (activation x activation) stay float by default; ``attention=True``
quantizes them too, each input on the fly (measured in docs/BENCHMARKS.md on a trained model:
accuracy kept, no gain end to end at the deployment window, so not the default). The result is
for CPUs only: TensorRT does not import ``DynamicQuantizeLinear``/``MatMulInteger``.

:func:`quantize_int8_static` writes the other scheme: static INT8 in QDQ form
(``QuantizeLinear``/``DequantizeLinear`` pairs around the Linear MatMuls and the convolutions),
int8 weights per output channel and symmetric int8 activations whose ranges are calibrated on
training features (:func:`calibration_windows`). The attention products stay float unless
``attention=True``: quantizing the softmax probabilities cost 1.3-2.8 points of average mAP on
trained models (normalising after the product keeps the accuracy, but OpenVINO then runs the
attention slower than its fused bf16 kernel: docs/BENCHMARKS.md). Measured there (docs/BENCHMARKS.md): accuracy kept, but no faster than the
dynamic model on ONNX Runtime nor than OpenVINO bf16, so it is an option. Its ranges hold for
features like the calibration set's: calibrate on the features the model will see.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from amnet.fileio import publish, temp_beside

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OP_TYPES",
    "STATIC_OP_TYPES",
    "calibration_windows",
    "conv1d_as_matmul",
    "int8_path_for",
    "quantize_int8",
    "quantize_int8_static",
]

DEFAULT_OP_TYPES: tuple[str, ...] = ("MatMul",)
# Conv stays Conv in the static scheme: OpenVINO's int8 convolution beat the im2col rewrite
# (383 vs 441 ms on one 2,304-snippet window, everything else alike).
STATIC_OP_TYPES: tuple[str, ...] = ("MatMul", "Conv")
DEFAULT_CALIBRATION_WINDOWS = 16
_INT64_MAX = np.iinfo(np.int64).max


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs one INFO line per skipped tensor on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def int8_path_for(path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    path = Path(path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}.int8.onnx")


def _conv_rewritable(node: Any, weights: dict[str, np.ndarray]) -> int | None:
    """The half-width ``p`` when ``node`` is a plain 1-D Conv with a constant weight that keeps
    the length (stride 1, dilation 1, one group, pads ``p, p`` with ``2p + 1 == k``), else None."""
    from onnx import helper

    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    w = weights.get(node.input[1])
    if w is None or w.ndim != 3:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad != "NOTSET" or attrs.get("group", 1) != 1:
        return None
    if list(attrs.get("strides", [1])) != [1] or list(attrs.get("dilations", [1])) != [1]:
        return None
    pads = list(attrs.get("pads", [0, 0]))
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != [w.shape[2]]:
        return None
    if len(pads) != 2 or pads[0] != pads[1] or 2 * pads[0] + 1 != w.shape[2]:
        return None
    return int(pads[0])


def conv1d_as_matmul(model: Any) -> int:
    """Rewrite, in place, every length-keeping 1-D Conv with a constant weight of ``model`` (an
    ``onnx.ModelProto``) as ``Pad -> Transpose -> k Slices -> Concat -> MatMul (+ Add) ->
    Transpose``; returns how many were rewritten. Exact in fp32: output ``t`` is
    ``sum_j W[:, :, j] @ x[t + j - p]``, i.e. the concatenated shifted inputs times the weight
    laid out as ``[k * C_in, C_out]``. The slices use constant bounds, so T stays dynamic."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 3}
    nodes: list[Any] = []
    added: list[Any] = []
    count = 0

    def const(name: str, values: Sequence[int]) -> str:
        added.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    for index, node in enumerate(graph.node):
        p = _conv_rewritable(node, weights)
        if p is None:
            nodes.append(node)
            continue
        w = weights[node.input[1]]
        k, c_in, c_out = w.shape[2], w.shape[1], w.shape[0]
        pfx = f"{node.name or f'Conv_{index}'}/as_matmul"
        flat = np.ascontiguousarray(w.transpose(2, 1, 0).reshape(k * c_in, c_out))
        added.append(numpy_helper.from_array(flat.astype(w.dtype), f"{pfx}/weight"))
        x = node.input[0]
        if p:
            pads = const(f"{pfx}/pads", [0, 0, p, 0, 0, p])
            nodes.append(helper.make_node("Pad", [x, pads], [f"{pfx}/padded"], name=f"{pfx}/Pad"))
            x = f"{pfx}/padded"
        nodes.append(
            helper.make_node("Transpose", [x], [f"{pfx}/btc"], perm=[0, 2, 1], name=f"{pfx}/In")
        )
        cols = []
        axis = const(f"{pfx}/axis", [1])
        for j in range(k):
            # Rows j .. j + T - 1 of the padded sequence (T + 2p rows): end = j - 2p from the end.
            end = j - 2 * p if j < 2 * p else _INT64_MAX
            starts, ends = const(f"{pfx}/start{j}", [j]), const(f"{pfx}/end{j}", [end])
            nodes.append(
                helper.make_node(
                    "Slice",
                    [f"{pfx}/btc", starts, ends, axis],
                    [f"{pfx}/shift{j}"],
                    name=f"{pfx}/Slice{j}",
                )
            )
            cols.append(f"{pfx}/shift{j}")
        nodes.append(helper.make_node("Concat", cols, [f"{pfx}/cols"], axis=2, name=f"{pfx}/Cols"))
        out = f"{pfx}/product"
        nodes.append(
            helper.make_node(
                "MatMul", [f"{pfx}/cols", f"{pfx}/weight"], [out], name=f"{pfx}/MatMul"
            )
        )
        if len(node.input) > 2 and node.input[2]:
            nodes.append(
                helper.make_node("Add", [out, node.input[2]], [f"{pfx}/biased"], name=f"{pfx}/Bias")
            )
            out = f"{pfx}/biased"
        nodes.append(
            helper.make_node(
                "Transpose", [out], [node.output[0]], perm=[0, 2, 1], name=f"{pfx}/Out"
            )
        )
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(added)
        used = {name for n in graph.node for name in n.input}
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return count


def _write_quantized(src: Path, dst: Path, quantize: Any, scheme: str) -> Path:
    """Run ``quantize(model, tmp_path)`` on the loaded ``src`` and publish the result at ``dst``
    atomically, with ``src``'s metadata, ``quantization`` = ``scheme`` and ``source_sha256``
    (the float model it came from)."""
    import onnx

    from amnet.fileio import file_sha256

    tmp = temp_beside(dst)
    try:
        source = onnx.load(str(src))
        props = {p.key: p.value for p in source.metadata_props}
        with _quiet_root_logger():
            scheme = quantize(source, tmp) or scheme
        del source
        model = onnx.load(str(tmp))
        props["quantization"] = scheme
        props["source_sha256"] = file_sha256(src)
        del model.metadata_props[:]
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        try:  # never publish a graph no runtime can load (0.1 s on the paper-size model)
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise ValueError(f"the quantized graph is not valid ONNX: {reason}") from None
        onnx.save(model, str(tmp))
        publish(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s (%s)", dst, scheme)
    return dst


def quantize_int8(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    per_channel: bool = False,
    conv_as_matmul: bool = True,
    attention: bool = False,
) -> Path:
    """Write the dynamically quantized ``src`` to ``dst`` atomically; metadata is kept and
    ``quantization`` records what was done. Returns ``dst``.

    ``attention`` also quantizes the MatMuls whose both inputs are activations (the attention
    products), each input on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def run(model: Any, tmp: Path) -> str:
        rewritten = conv1d_as_matmul(model) if conv_as_matmul else 0
        quantize_dynamic(
            model_input=model,
            model_output=str(tmp),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": not attention},
        )
        return (
            f"dynamic int8 weights ({'per-channel' if per_channel else 'per-tensor'}), "
            f"ops: {','.join(op_types)}"
            + (f"; {rewritten} Conv rewritten as MatMul first" if rewritten else "")
            + ("; attention products too" if attention else "")
        )

    return _write_quantized(Path(src), Path(dst), run, "dynamic int8")


def attention_products(model: Any) -> list[str]:
    """Names of the MatMuls of ``model`` whose both inputs are activations (the attention
    products ``q k^T`` and ``p v``), as opposed to a Linear layer's activation x weight."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul" and not any(i in constants for i in n.input)
    ]


def calibration_windows(
    videos: Iterable[np.ndarray],
    max_len: int,
    overlap: float,
    count: int,
    force_upsampling: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``count`` model inputs ``(features [1, L, C] float32, lengths [1] int64)`` cut
    from ``videos`` (``[T, C]`` arrays) in the windows inference uses (one per video when it
    fits, else windows of ``max_len``; :func:`amnet.postprocess.plan_chunks`), taken from the
    videos in turn so that a long first video does not fill the set alone. With
    ``force_upsampling`` each video is first resampled to ``max_len``, as the runtime does."""
    from amnet.postprocess import plan_chunks
    from amnet.timebase import resample_snippets

    if count < 1:
        raise ValueError(f"calibration needs at least one window, got {count}")
    queues = []
    for video in videos:
        if len(video) == 0:
            continue
        if force_upsampling:
            video = resample_snippets(video, max_len)
        plan = plan_chunks(len(video), max_len, overlap)
        queues.append([video[start:end] for start, end in plan])
        if len(queues) >= count:  # one window from each of `count` videos is enough
            break
    windows: list[tuple[np.ndarray, np.ndarray]] = []
    while queues and len(windows) < count:
        for queue in list(queues):
            if len(windows) == count:
                break
            window = queue.pop(0)
            windows.append(
                (
                    np.ascontiguousarray(window, dtype=np.float32)[None],
                    np.array([len(window)], dtype=np.int64),
                )
            )
            if not queue:
                queues.remove(queue)
    if not windows:
        raise ValueError("calibration needs at least one non-empty video")
    return windows


def quantize_int8_static(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    windows: Sequence[tuple[np.ndarray, np.ndarray]],
    op_types: Sequence[str] = STATIC_OP_TYPES,
    attention: bool = False,
) -> Path:
    """Write ``src`` statically quantized (QDQ) to ``dst`` atomically, activation ranges
    calibrated (min/max) on ``windows`` of :func:`calibration_windows`. Weights int8 per output
    channel, activations symmetric int8 (OpenVINO's integer kernels want zero points of 0).
    Metadata is kept and ``quantization`` records the scheme. Returns ``dst``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from amnet.metadata import INPUT_NAMES

    if not windows:
        raise ValueError("static quantization needs at least one calibration window")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter(windows)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._items, None)
            return None if item is None else dict(zip(INPUT_NAMES, item, strict=True))

    def run(model: Any, tmp: Path) -> str:
        excluded = [] if attention else attention_products(model)
        # The calibrator keeps its augmented model in a temporary folder of its own.
        quantize_static(
            model,
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
            extra_options={"ActivationSymmetric": True},
            calibration_providers=["CPUExecutionProvider"],
        )
        frames = sum(int(lengths[0]) for _, lengths in windows)
        return (
            f"static int8 QDQ (per-channel weights, symmetric activations), ops: "
            f"{','.join(op_types)}"
            + (f"; {len(excluded)} attention products kept float" if excluded else "")
            + f"; calibrated on {len(windows)} windows, {frames} snippets"
        )

    return _write_quantized(Path(src), Path(dst), run, "static int8")
