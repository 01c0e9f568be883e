"""OpenVINO backend: an exported ``.onnx`` chunk graph on OpenVINO's CPU plugin.

Chosen with ``Detector(path, runtime="openvino", precision="bf16")`` or ``amnet-infer --runtime
openvino --precision bf16`` (the ``[openvino]`` extra). On CPUs with bfloat16 arithmetic
(AVX-512 BF16, AMX) the bf16 graph runs about twice as fast as ONNX Runtime fp32 and faster than
ONNX Runtime's INT8 model (docs/BENCHMARKS.md); a statically quantized (QDQ) model runs its
int8 operators as integers and, with ``precision="bf16"``, the rest in bf16: the fastest CPU
path measured. ``precision="fp32"`` (the default) is f32
inference (with OpenVINO's generated kernels switched off: they computed this graph wrongly in
f32). Every model is checked against ONNX Runtime on one window when it is opened: a wrong
runtime must be an error, never a silent wrong answer.
The compiled model is shared; each thread gets its own infer request, so several threads may
call ``run`` at once.

Besides the model with a dynamic T, the full window (one chunk of ``max_seq_len`` snippets, the
shape of every window of a long video) is compiled with static shapes: OpenVINO then plans its
memory ahead and drops the layout changes around the convolutions. On the paper-size model's
window that is 1.5x faster in bf16 and 1.2x in f32 (docs/BENCHMARKS.md, "OpenVINO: static
shapes"). A single chunk nearly as long (:data:`STATIC_PAD_FRACTION`) is padded to the window;
padding is masked, so its valid points get the same numbers, and the outputs are cut back to
the points of the chunk's own length. Other chunks run on the dynamic model padded the same way
to a multiple of :data:`DYNAMIC_STEP` snippets, so that videos of many lengths share a few
shapes (1.11x on the THUMOS14-shaped set's shorter videos, nearly each of a length of its own).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from amnet.deploy.backend_onnx import _first_line
from amnet.deploy.backends import check_batch, check_device, check_metadata, closed_error
from amnet.errors import AMNetError
from amnet.metadata import INPUT_NAMES, OUTPUT_NAMES

logger = logging.getLogger(__name__)

__all__ = ["OpenVinoBackend"]

PRECISIONS = ("fp32", "bf16")
# The load-time check against ONNX Runtime: one window of this many snippets, and the largest
# score and segment (snippets) differences accepted per precision. bf16 keeps 8 bits of
# mantissa: measured 3e-4 / 0.08 on a trained paper-size model. A statically quantized (QDQ)
# model runs its int8 operators as integers here and as float emulation in the reference:
# measured 1e-2 / 1.0 (rounding differences); the broken f32 path differed by 0.16 / 37.
PARITY_WINDOW = 288
PARITY_TOLERANCE = {"fp32": (1e-4, 1e-2), "bf16": (1e-2, 0.5), "int8": (5e-2, 2.0)}
# Chunks at least this fraction of the full window run padded on its static-shape model: where
# the padded run measured as fast as the dynamic one (the static model's gain is 1.5x in bf16,
# 1.2x in f32), so padding never costs more than it saves.
STATIC_PAD_FRACTION = {"fp32": 0.9, "bf16": 0.75}
# Other chunks run on the dynamic model padded to a multiple of this many snippets, so that
# the lengths of many videos share a few shapes (see OpenVinoBackend.run).
DYNAMIC_STEP = 128


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise AMNetError("runtime openvino needs OpenVINO: pip install 'amnet[openvino]'") from None
    return openvino


def compile_config(precision: str, threads: int | None = None) -> dict[str, Any]:
    """The CPU plugin settings the backend compiles with (benchmarks use the same)."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if precision == "fp32":
        # OpenVINO's generated ("snippets") kernels give wrong f32 results on this graph
        # with dynamic T (scores off by 0.06, segments by snippets; measured with OpenVINO
        # 2026.4); without them f32 matches ONNX Runtime to 1e-6 at the same speed. bf16
        # is right either way and faster with them.
        config["SNIPPETS_MODE"] = "DISABLE"
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVinoBackend:
    """An AMNet ``.onnx`` chunk graph compiled by OpenVINO for the CPU.

    ``static_window=False`` compiles the dynamic model only: a faster load and, in bf16, less
    memory (about 250 MB at peak for the paper-size model), at the speed of dynamic shapes.
    """

    name = "openvino"
    max_batch: int | None = None

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        intra_op_threads: int | None = None,
        precision: str = "fp32",
        static_window: bool = True,
    ) -> None:
        from amnet.deploy.backend_onnx import import_onnxruntime
        from amnet.metadata import read_onnx_metadata

        ov = import_openvino()
        self.path = Path(path)
        self.device = check_device(device, ("cpu",), self.name)
        if precision not in PRECISIONS:
            raise AMNetError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        core = ov.Core()
        if precision == "bf16" and "BF16" not in core.get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"
        ):
            raise AMNetError(
                "precision bf16 asked for, but this CPU has no bfloat16 arithmetic; use fp32"
            )
        self.precision = precision
        # The metadata lives in the ONNX file's metadata_props; ONNX Runtime (always present in
        # the runtime) reads it without optimising the graph.
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise AMNetError(f"{self.path}: cannot load the model ({_first_line(exc)})") from None
        self.metadata = check_metadata(read_onnx_metadata(session, str(self.path)), str(self.path))
        if self.metadata.get("precision") == "fp16":
            raise AMNetError(
                f"{self.path}: an fp16 graph (for TensorRT); OpenVINO takes the fp32 model and "
                "lowers it itself (precision bf16)"
            )
        config = compile_config(precision, intra_op_threads)
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError with long multi-line texts
            raise AMNetError(
                f"{self.path}: OpenVINO cannot read the model ({_first_line(exc)})"
            ) from None
        names = {o.get_any_name() for o in model.outputs}
        if not set(OUTPUT_NAMES) <= names:
            raise AMNetError(f"{self.path}: not an AMNet chunk graph (outputs {sorted(names)})")
        self._input_dim = int(self.metadata["input_dim"])
        self.window = int(self.metadata["max_seq_len"])
        # A QDQ model (amnet.export.quantize, static) carries its scheme in the metadata.
        self.quantized = "quantization" in self.metadata
        window = self._full_window(model) if static_window else None
        # The two compiles take about a second each for the paper-size model and run side by
        # side (OpenVINO releases the GIL), unless the caller asked for one thread.
        workers = 2 if window is not None and intra_op_threads != 1 else 1
        with ThreadPoolExecutor(workers) as pool:
            dynamic = pool.submit(core.compile_model, model, "CPU", config)
            static = (
                pool.submit(core.compile_model, window, "CPU", config)
                if window is not None
                else None
            )
            try:
                self.compiled = dynamic.result()
            except Exception as exc:
                raise AMNetError(
                    f"{self.path}: OpenVINO cannot compile the model ({_first_line(exc)})"
                ) from None
            self.static = None
            if static is not None:
                try:
                    self.static = static.result()
                except Exception as exc:
                    self._static_refused(exc)
        self._local = threading.local()
        self._check_against(session)

    def _full_window(self, model: Any) -> Any:
        """A copy of ``model`` with static shapes for one chunk of the full window, or None
        when OpenVINO cannot reshape it (the dynamic model then runs every chunk)."""
        window = model.clone()
        try:
            window.reshape({INPUT_NAMES[0]: [1, self.window, self._input_dim], INPUT_NAMES[1]: [1]})
        except Exception as exc:
            self._static_refused(exc)
            return None
        return window

    def _static_refused(self, exc: BaseException) -> None:
        logger.warning(
            "%s: OpenVINO cannot compile the full window with static shapes (%s); every chunk "
            "runs with dynamic shapes",
            self.path,
            _first_line(exc),
        )

    def _check_against(self, session: Any) -> None:
        """Refuse the model when OpenVINO's outputs are not ONNX Runtime's on one window.

        OpenVINO's f32 CPU path has been measured to give wrong results on the paper-size
        model (segments off by snippets, mAP 7.8 points lower; its generated kernels, now
        switched off for f32); a wrong runtime must be an error, never a silent wrong answer.
        Both compiled models are checked: the static one may fuse differently.
        """
        length = min(self.window, PARITY_WINDOW)
        rng = np.random.default_rng(0)
        x = np.abs(rng.normal(0.0, 0.2, (1, length, self._input_dim))).astype(np.float32)
        lengths = np.array([length], dtype=np.int64)
        reference = session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: x, INPUT_NAMES[1]: lengths})
        # Throwaway requests: the threads that run the model later make their own.
        runs = [self._infer(self.compiled, None, x, lengths)]
        if self.static is not None:
            runs.append(self._padded_run(self.static, None, x, lengths, self.window))
        score_tol, segment_tol = PARITY_TOLERANCE["int8" if self.quantized else self.precision]
        for scores, segments in runs:
            score_diff = float(np.abs(scores - reference[0]).max())
            segment_diff = float(np.abs(segments - reference[1]).max())
            if not (score_diff <= score_tol and segment_diff <= segment_tol):
                raise AMNetError(
                    f"{self.path}: OpenVINO ({self.precision}) disagrees with ONNX Runtime on "
                    f"this model (scores by {score_diff:.2g}, segments by {segment_diff:.2g} "
                    "snippets); use the onnxruntime runtime"
                    + (" or precision bf16" if self.precision == "fp32" else "")
                )

    def run(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, lengths = check_batch(features, lengths, self._input_dim)
        if self.compiled is None:
            raise closed_error(self.path)
        t = features.shape[1]
        if (
            self.static is not None
            and features.shape[0] == 1
            and self.window * STATIC_PAD_FRACTION[self.precision] <= t <= self.window
            and 1 <= lengths[0] <= t
        ):
            return self._padded_run(self.static, "static_request", features, lengths, self.window)
        if t > 0 and lengths.min() >= 1 and lengths.max() <= t:
            # A multiple of DYNAMIC_STEP: OpenVINO prepares its kernels anew for every shape
            # it has not seen (40 windows of new lengths took 1.8x their second run), and
            # videos of every length would each bring one.
            return self._padded_run(
                self.compiled, "request", features, lengths, -(-t // DYNAMIC_STEP) * DYNAMIC_STEP
            )
        return self._infer(self.compiled, "request", features, lengths)

    def _padded_run(
        self,
        compiled: Any,
        slot: str | None,
        features: np.ndarray,
        lengths: np.ndarray,
        padded: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A batch of chunks run zero-padded to ``padded`` snippets, and its outputs cut back
        to the points the batch's own length has. Padding is masked (``lengths``): the valid
        points get the same numbers."""
        b, t, c = features.shape
        if t < padded:
            grown = np.zeros((b, padded, c), dtype=np.float32)
            grown[:, :t] = features
            features = grown
        scores, segments = self._infer(compiled, slot, features, lengths)
        if t < padded:
            keep = self._points_of(t, padded)
            scores, segments = scores[:, keep], segments[:, keep]
        return scores, segments

    def _points_of(self, t: int, padded: int) -> np.ndarray:
        """Indices, in the output of a chunk padded to ``padded`` snippets, of the points of
        one of ``t`` snippets.

        The pyramid pads T to ``pad_multiple`` and level ``l`` has ``padded_t / 2**l`` points,
        listed level after level; the longer chunk's level ``l`` starts with the shorter's."""
        pad = int(self.metadata["pad_multiple"])
        own, full = -(-t // pad) * pad, -(-padded // pad) * pad
        keep, offset, level = [], 0, 0
        while 2**level <= pad:
            keep.append(offset + np.arange(own >> level))
            offset += full >> level
            level += 1
        return np.concatenate(keep)

    def _infer(
        self, compiled: Any, slot: str | None, features: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ``compiled`` with this thread's infer request for it (kept under ``slot``; a
        new one, not kept, for ``slot=None``)."""
        request = getattr(self._local, slot, None) if slot else None
        if request is None:
            request = compiled.create_infer_request()
            if slot:
                setattr(self._local, slot, request)
        try:
            result = request.infer({INPUT_NAMES[0]: features, INPUT_NAMES[1]: lengths})
        except Exception as exc:
            raise AMNetError(f"{self.path}: OpenVINO failed ({_first_line(exc)})") from None
        scores = result[compiled.output(OUTPUT_NAMES[0])]
        segments = result[compiled.output(OUTPUT_NAMES[1])]
        return np.array(scores, dtype=np.float32), np.array(segments, dtype=np.float32)

    def close(self) -> None:
        self.compiled = self.static = None

    def __repr__(self) -> str:
        return f"OpenVinoBackend({str(self.path)!r}, precision={self.precision!r})"
