"""OpenVINO backend: an exported ``.onnx`` chunk graph on OpenVINO's CPU plugin.

Chosen with ``Detector(path, runtime="openvino", precision="bf16")`` or ``amnet-infer --runtime
openvino --precision bf16`` (the ``[openvino]`` extra). On CPUs with bfloat16 arithmetic
(AVX-512 BF16, AMX) the bf16 graph runs about twice as fast as ONNX Runtime fp32 and faster than
ONNX Runtime's INT8 model (docs/BENCHMARKS.md); ``precision="fp32"`` (the default) is f32
inference (with OpenVINO's generated kernels switched off: they computed this graph wrongly in
f32). Every model is checked against ONNX Runtime on one window when it is opened: a wrong
runtime must be an error, never a silent wrong answer.
The compiled model is shared; each thread gets its own infer request, so several threads may
call ``run`` at once.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from amnet.deploy.backend_onnx import _first_line
from amnet.deploy.backends import check_batch, check_device, check_metadata
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


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise AMNetError("runtime openvino needs OpenVINO: pip install 'amnet[openvino]'") from None
    return openvino


class OpenVinoBackend:
    """An AMNet ``.onnx`` chunk graph compiled by OpenVINO for the CPU."""

    name = "openvino"
    max_batch: int | None = None

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        intra_op_threads: int | None = None,
        precision: str = "fp32",
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
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"
        }
        if precision == "fp32":
            # OpenVINO's generated ("snippets") kernels give wrong f32 results on this graph
            # with dynamic T (scores off by 0.06, segments by snippets; measured with OpenVINO
            # 2026.4); without them f32 matches ONNX Runtime to 1e-6 at the same speed. bf16
            # is right either way and faster with them.
            config["SNIPPETS_MODE"] = "DISABLE"
        if intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = int(intra_op_threads)
        try:
            self.compiled = core.compile_model(str(self.path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with long multi-line texts
            raise AMNetError(
                f"{self.path}: OpenVINO cannot compile the model ({_first_line(exc)})"
            ) from None
        names = {o.get_any_name() for o in self.compiled.outputs}
        if not set(OUTPUT_NAMES) <= names:
            raise AMNetError(f"{self.path}: not an AMNet chunk graph (outputs {sorted(names)})")
        self._input_dim = int(self.metadata["input_dim"])
        # A QDQ model (amnet.export.quantize, static) carries its scheme in the metadata.
        self.quantized = "quantization" in self.metadata
        self._local = threading.local()
        self._check_against(session)

    def _check_against(self, session: Any) -> None:
        """Refuse the model when OpenVINO's outputs are not ONNX Runtime's on one window.

        OpenVINO's f32 CPU path has been measured to give wrong results on the paper-size
        model (segments off by snippets, mAP 7.8 points lower; its generated kernels, now
        switched off for f32); a wrong runtime must be an error, never a silent wrong answer.
        """
        length = min(int(self.metadata["max_seq_len"]), PARITY_WINDOW)
        rng = np.random.default_rng(0)
        x = np.abs(rng.normal(0.0, 0.2, (1, length, self._input_dim))).astype(np.float32)
        lengths = np.array([length], dtype=np.int64)
        reference = session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: x, INPUT_NAMES[1]: lengths})
        scores, segments = self.run(x, lengths)
        score_tol, segment_tol = PARITY_TOLERANCE["int8" if self.quantized else self.precision]
        score_diff = float(np.abs(scores - reference[0]).max())
        segment_diff = float(np.abs(segments - reference[1]).max())
        if not (score_diff <= score_tol and segment_diff <= segment_tol):
            raise AMNetError(
                f"{self.path}: OpenVINO ({self.precision}) disagrees with ONNX Runtime on this "
                f"model (scores by {score_diff:.2g}, segments by {segment_diff:.2g} snippets); "
                "use the onnxruntime runtime"
                + (" or precision bf16" if self.precision == "fp32" else "")
            )

    def run(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, lengths = check_batch(features, lengths, self._input_dim)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        try:
            result = request.infer({INPUT_NAMES[0]: features, INPUT_NAMES[1]: lengths})
        except Exception as exc:
            raise AMNetError(f"{self.path}: OpenVINO failed ({_first_line(exc)})") from None
        scores = result[self.compiled.output(OUTPUT_NAMES[0])]
        segments = result[self.compiled.output(OUTPUT_NAMES[1])]
        return np.array(scores, dtype=np.float32), np.array(segments, dtype=np.float32)

    def close(self) -> None:
        self.compiled = None

    def __repr__(self) -> str:
        return f"OpenVinoBackend({str(self.path)!r}, precision={self.precision!r})"
