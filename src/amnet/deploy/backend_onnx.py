"""ONNX Runtime backend: an exported ``.onnx`` chunk graph (FP32 or the dynamic INT8 one).

``device="cpu"`` uses the CPU execution provider; ``device="cuda"`` the CUDA provider, and only
when this ONNX Runtime build has it and the session really got it (ONNX Runtime itself falls
back to the CPU with a warning when the CUDA libraries fail to load; here that is an error).
``InferenceSession.run`` may be called from several threads at once, so one session serves a
whole multi-threaded :class:`~amnet.deploy.detector.Detector`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from amnet.deploy.backends import check_batch, check_device, check_metadata, closed_error
from amnet.errors import AMNetError
from amnet.metadata import INPUT_NAMES, OUTPUT_NAMES

logger = logging.getLogger(__name__)

__all__ = ["OnnxRuntimeBackend", "import_onnxruntime", "open_session", "spinning_allowed"]

_CPU, _CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
# ONNX Runtime's default (warning) would print graph-optimisation notes on stderr for every
# session; errors still surface as exceptions.
_LOG_ERROR = 3


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise AMNetError(
            f"ONNX Runtime is not available ({detail}); install onnxruntime "
            "(or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]


def spinning_allowed() -> bool:
    """Whether ONNX Runtime's CPU threads may spin (busy-wait) for work: its default, unless
    ``OMP_WAIT_POLICY`` is ``PASSIVE``, the variable with which OpenMP runtimes (PyTorch's
    CPU threads among them) are told not to.

    Spinning buys latency when the model has the cores to itself (a short paper-size window: 9%
    faster, docs/BENCHMARKS.md). Beside other CPU work (feature extraction, other processes
    of a pipeline) the spinning threads take the cores that work needs, and each call ran up
    to 1.5 times slower and burnt more CPU than with waiting threads asleep."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE"


def open_session(
    path: str | Path,
    device: str = "cpu",
    intra_op_threads: int | None = None,
    spinning: bool | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` on ``device`` ("cpu" or "cuda"): the one way the
    package opens ONNX models (the backend, export parity checks, benchmarks).

    CUDA only when this ONNX Runtime has the provider and the session really got it (ONNX Runtime
    itself would fall back to the CPU with a warning; here that is an error). ``spinning``:
    whether idle CPU threads busy-wait for work (default: :func:`spinning_allowed`).
    """
    ort = import_onnxruntime()
    if device == "cuda":
        available = ort.get_available_providers()
        if _CUDA not in available:
            raise AMNetError(
                f"device cuda asked for, but this ONNX Runtime has no CUDA provider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use "
                "device cpu"
            )
        providers = [_CUDA, _CPU]  # CPU only for the odd op the CUDA provider lacks
    else:
        providers = [_CPU]
    options = ort.SessionOptions()
    options.log_severity_level = _LOG_ERROR
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    if not (spinning_allowed() if spinning is None else spinning):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for unreadable models
        raise AMNetError(
            f"{path}: ONNX Runtime cannot load the model ({_first_line(exc)})"
        ) from None
    if device == "cuda" and _CUDA not in session.get_providers():
        raise AMNetError(
            f"{path}: ONNX Runtime could not start its CUDA provider (CUDA or cuDNN "
            "libraries missing?); refusing to run on the CPU instead"
        )
    return session


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` over an AMNet chunk graph."""

    name = "onnxruntime"
    max_batch: int | None = None

    def __init__(
        self, path: str | Path, device: str | None = None, intra_op_threads: int | None = None
    ) -> None:
        from amnet.metadata import read_onnx_metadata

        self.path = Path(path)
        self.device = check_device(device, ("cpu", "cuda"), self.name)
        self.session = open_session(self.path, self.device, intra_op_threads)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise AMNetError(
                f"{self.path}: not an AMNet chunk graph (inputs {inputs}, outputs {outputs}; "
                f"expected inputs {list(INPUT_NAMES)} and outputs {list(OUTPUT_NAMES)})"
            )
        self.metadata = check_metadata(
            read_onnx_metadata(self.session, str(self.path)), str(self.path)
        )
        self._input_dim = int(self.metadata["input_dim"])

    @property
    def quantization(self) -> str | None:
        return self.metadata.get("quantization")

    def run(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, lengths = check_batch(features, lengths, self._input_dim)
        session = self.session
        if session is None:
            raise closed_error(self.path)
        try:
            scores, segments = session.run(
                list(OUTPUT_NAMES), {INPUT_NAMES[0]: features, INPUT_NAMES[1]: lengths}
            )
        except Exception as exc:  # ORT's own error types (e.g. out of memory, bad shapes)
            raise AMNetError(f"{self.path}: ONNX Runtime failed ({_first_line(exc)})") from None
        return np.asarray(scores, dtype=np.float32), np.asarray(segments, dtype=np.float32)

    def close(self) -> None:
        self.session = None

    def __repr__(self) -> str:
        return f"OnnxRuntimeBackend({str(self.path)!r}, device={self.device!r})"
