"""One interface over the three inference engines, and the choice of engine by file suffix.

A backend runs the exported chunk graph on one batch of chunks::

    scores, segments = backend.run(features, lengths)
    # features [B, T, C] float32, lengths [B] int64
    # -> scores [B, P, K] float32 (sigmoid probabilities, 0 at padded points),
    #    segments [B, P, 2] float32 (decoded, in snippet units from the chunk start)

and carries the model's metadata (``backend.metadata``: config, class names, fps, feature
stride, frames per snippet, max_seq_len, chunk overlap, input_dim, num_classes; the same typed
dict as :func:`amnet.metadata.read_onnx_metadata`). Chunking, batching and
post-processing live in :class:`amnet.deploy.detector.Detector`, above this interface, so every
backend yields detections through the same code.

=================  ===================  ===========================================
suffix             backend              devices
=================  ===================  ===========================================
``.onnx``          ONNX Runtime         ``cpu`` (default), ``cuda`` (CUDA provider)
``.plan/.engine``  TensorRT 10          ``cuda`` only (default); ``<plan>.json`` sidecar
``.pt/.pth``       PyTorch              ``cpu`` (default), ``cuda``
=================  ===================  ===========================================

Only the chosen backend's engine is imported: an ONNX model never imports torch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from amnet.cpus import fit_to_cpus
from amnet.errors import AMNetError
from amnet.metadata import validate_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND_SUFFIXES",
    "DEVICES",
    "Backend",
    "backend_name_for",
    "check_batch",
    "open_backend",
]

DEVICES = ("cpu", "cuda")
BACKEND_SUFFIXES: dict[str, str] = {
    ".onnx": "onnxruntime",
    ".plan": "tensorrt",
    ".engine": "tensorrt",
    ".pt": "torch",
    ".pth": "torch",
}


@runtime_checkable
class Backend(Protocol):
    """What :class:`~amnet.deploy.detector.Detector` needs from an inference engine.

    Implementations must allow concurrent ``run`` calls from several threads.
    """

    name: str  # "onnxruntime", "tensorrt" or "torch"
    device: str  # "cpu" or "cuda"
    path: Path
    metadata: dict[str, Any]
    max_batch: int | None  # most chunks per run call (None: no limit)

    def run(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``features [B, T, C] float32``, ``lengths [B] int64`` -> ``scores``, ``segments``."""
        ...

    def close(self) -> None:
        """Release the engine: ``run`` then raises :func:`closed_error`."""
        ...


def closed_error(path: str | os.PathLike) -> AMNetError:
    """What ``run`` raises once its backend (or the Detector holding it) was closed."""
    return AMNetError(f"{path}: this model was closed; open it again to run it")


def backend_name_for(path: str | os.PathLike) -> str:
    """The backend a model file runs on, from its suffix; AMNetError for an unknown one."""
    suffix = Path(path).suffix.lower()
    name = BACKEND_SUFFIXES.get(suffix)
    if name is None:
        known = ", ".join(sorted(BACKEND_SUFFIXES))
        shown = f"suffix {suffix!r}" if suffix else "no suffix"
        raise AMNetError(f"{path}: unknown model type ({shown}; expected one of {known})")
    return name


def check_device(device: str | None, allowed: tuple[str, ...], backend: str) -> str:
    """``device`` validated for ``backend`` (``None``: the backend's first, natural device)."""
    if device is None:
        return allowed[0]
    if not isinstance(device, str) or device.lower() not in DEVICES:
        # "cuda:1": the GPU is chosen the way every CUDA program's is, outside the process.
        hint = (
            "; choose the GPU with CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=1 and 'cuda')"
            if isinstance(device, str) and device.lower().startswith("cuda:")
            else ""
        )
        raise AMNetError(f"device must be one of {', '.join(DEVICES)}, got {device!r}{hint}")
    device = device.lower()
    if device not in allowed:
        raise AMNetError(f"the {backend} backend runs on {' or '.join(allowed)}, not {device}")
    return device


def check_metadata(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The metadata of a model being opened, validated once for every backend: types and
    ranges (:func:`amnet.metadata.validate_metadata`) and its post-processing settings; one
    AMNetError naming the model file and the field."""
    from amnet.postprocess import config_from_test_cfg

    meta = validate_metadata(meta, where)
    try:
        config_from_test_cfg(meta["config"].get("test_cfg", {}))
    except (AMNetError, TypeError) as exc:
        raise AMNetError(f"{where}: metadata 'config.test_cfg': {exc}") from None
    return meta


def check_batch(
    features: np.ndarray, lengths: np.ndarray, input_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of one ``run`` call as contiguous float32 / int64, or ValueError."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if features.ndim != 3 or features.shape[2] != input_dim:
        raise ValueError(f"features must be [B, T, {input_dim}], got {list(features.shape)}")
    if lengths.shape != (features.shape[0],):
        raise ValueError(f"lengths must be [{features.shape[0]}], got {list(lengths.shape)}")
    return features, lengths


def open_backend(
    path: str | os.PathLike,
    device: str | None = None,
    intra_op_threads: int | None = None,
    precision: str = "fp32",
    runtime: str | None = None,
) -> Backend:
    """Open ``path`` with the backend its suffix names (see the module docstring).

    ``device=None`` picks the backend's natural device (``cpu``, or ``cuda`` for TensorRT).
    Asking for a device the backend or the machine cannot provide is an AMNetError, never a
    silent fallback. ``intra_op_threads`` bounds the CPU threads of one inference call (ONNX
    Runtime's session option; for PyTorch, ``torch.set_num_threads``, which is process-wide).
    ``runtime="openvino"`` runs an ``.onnx`` model on OpenVINO. ``precision="bf16"`` is for
    ``.pt`` models (bfloat16 autocast) and OpenVINO; ONNX Runtime and TensorRT run a model as it
    was exported (an INT8 ONNX model, an engine built with ``--fp16``).
    """
    path = Path(path)
    name = backend_name_for(path)
    if runtime not in (None, name):
        if runtime != "openvino" or name != "onnxruntime":
            raise AMNetError(
                f"runtime {runtime!r} cannot run {path.name}: .onnx models run on onnxruntime "
                "or openvino; .plan on tensorrt; .pt on torch"
            )
        name = "openvino"
    if precision != "fp32" and name not in ("torch", "openvino"):
        raise AMNetError(
            f"precision {precision} applies to .pt models and the openvino runtime; "
            f"{path.name} runs as exported on {name} (use an INT8 ONNX model or a TensorRT "
            "engine built with --fp16)"
        )
    if not path.exists():
        raise AMNetError(f"{path}: model file not found")
    if not path.is_file():
        raise AMNetError(f"{path}: is not a file, expected a model file")
    if intra_op_threads is not None and (
        isinstance(intra_op_threads, bool)
        or not isinstance(intra_op_threads, (int, np.integer))
        or intra_op_threads < 1
    ):
        raise AMNetError(f"intra_op_threads must be an integer >= 1, got {intra_op_threads!r}")
    if intra_op_threads is not None:
        intra_op_threads = fit_to_cpus("intra_op_threads", int(intra_op_threads))
    if name == "onnxruntime":
        from amnet.deploy.backend_onnx import OnnxRuntimeBackend

        backend: Backend = OnnxRuntimeBackend(path, device, intra_op_threads)
    elif name == "openvino":
        from amnet.deploy.backend_openvino import OpenVinoBackend

        backend = OpenVinoBackend(path, device, intra_op_threads, precision=precision)
    elif name == "tensorrt":
        from amnet.deploy.backend_tensorrt import TensorRTBackend

        backend = TensorRTBackend(path, device)
    else:
        from amnet.deploy.backend_torch import TorchBackend

        backend = TorchBackend(path, device, intra_op_threads, precision=precision)
    logger.debug("opened %s with %s on %s", path, backend.name, backend.device)
    return backend
