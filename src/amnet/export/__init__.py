"""Export of AMNet to ONNX and TensorRT, and the pieces a runtime reuses.

Submodules (import them directly; this package imports nothing heavy on its own):

- ``to_onnx``: checkpoint -> ONNX chunk graph with metadata and parity checks (CLI + API).
- ``to_tensorrt``: ONNX -> TensorRT engine + ``.plan.json`` sidecar (CLI + API).
- ``trt_compat``: static TensorRT 10 compatibility check (``check_tensorrt_compatibility``).
- ``quantize``: dynamic INT8 for CPUs (``quantize_int8``).

The model metadata these tools write, and the graph contract, live in :mod:`amnet.metadata`;
running a model is the runtime's job (:mod:`amnet.deploy`), which never imports this package. The names below are also reachable as attributes of this package, imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_onnx": "to_onnx",
    "build_engine": "to_tensorrt",
    "profile_shapes": "to_tensorrt",
    "check_tensorrt_compatibility": "trt_compat",
    "quantize_int8": "quantize",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
