"""TensorRT backend: a serialized engine (``.plan``/``.engine``) and its ``<plan>.json`` sidecar.

Written against the TensorRT 10 and 11 Python API (named I/O tensors: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Device buffers come from cuda-python
(``cuda.bindings.runtime``, or the older ``cuda.cudart``) when it is installed, so a deployment
needs numpy + tensorrt + cuda-python only; otherwise from torch CUDA tensors.

An execution context holds per-call state (input shapes, tensor addresses), so ``run`` is
serialised by a lock; the buffers are reused and grown on demand, never allocated per call.
The engine's optimization profile (from the sidecar) bounds the batch and chunk length; the
Detector reads ``max_batch`` and ``max_len`` and never exceeds them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from amnet.deploy.backends import check_batch, check_device, check_metadata, closed_error
from amnet.errors import AMNetError
from amnet.metadata import INPUT_NAMES, OUTPUT_NAMES, plan_sidecar_path, read_plan_metadata

logger = logging.getLogger(__name__)

__all__ = ["TensorRTBackend", "import_tensorrt"]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line AMNetError."""
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        raise AMNetError(
            f"TensorRT is not available (import tensorrt failed: {_first_line(exc)}); running a "
            ".plan/.engine needs the tensorrt package and an NVIDIA GPU"
        ) from None
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise AMNetError(f"TensorRT {tensorrt.__version__} found; this runtime needs TensorRT 10+")
    return tensorrt


class _CudaPython:
    """Device memory and one stream through cuda-python's runtime API."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.rt = cudart
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _check(self, result: Any, what: str) -> Any:
        result = result if isinstance(result, tuple) else (result,)
        err, rest = result[0], result[1:]
        if int(err) != 0:
            raise AMNetError(f"CUDA call {what} failed ({err})")
        return rest[0] if rest else None

    def alloc(self, nbytes: int) -> Any:
        ptr = self._check(self.rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
        return (ptr, int(ptr))

    def free(self, handle: Any) -> None:
        self.rt.cudaFree(handle[0])

    def to_device(self, handle: Any, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(
            self.rt.cudaMemcpyAsync(handle[1], array.ctypes.data, array.nbytes, kind, self.stream),
            "cudaMemcpyAsync",
        )

    def to_host(self, array: np.ndarray, handle: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(
            self.rt.cudaMemcpyAsync(array.ctypes.data, handle[1], array.nbytes, kind, self.stream),
            "cudaMemcpyAsync",
        )

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        self.rt.cudaStreamDestroy(self.stream)


class _TorchCuda:
    """The same through torch CUDA tensors (byte buffers) and a dedicated stream."""

    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise AMNetError("TensorRT needs a CUDA GPU, and none is visible")
        self.torch = torch
        self.stream = torch.cuda.Stream()

    def alloc(self, nbytes: int) -> Any:
        buf = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        return (buf, buf.data_ptr())

    def free(self, handle: Any) -> None:
        del handle

    def to_device(self, handle: Any, array: np.ndarray) -> None:
        src = self.torch.from_numpy(array.reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self.stream):
            handle[0][: array.nbytes].copy_(src)

    def to_host(self, array: np.ndarray, handle: Any) -> None:
        dst = self.torch.from_numpy(array.reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self.stream):
            dst.copy_(handle[0][: array.nbytes])

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        pass


def _engine_limits(engine: Any, max_seq_len: int, path: Path) -> dict[str, int]:
    """The optimisation-profile limits recorded in the sidecar's ``engine`` section, checked."""
    where = plan_sidecar_path(path)
    if not isinstance(engine, dict):
        raise AMNetError(f"{where}: 'engine' must be a JSON object")
    limits = {
        "max_batch": engine.get("max_batch", 1),
        "max_len": engine.get("max_len", max_seq_len),
        "min_len": engine.get("min_len", 1),
    }
    for key, value in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AMNetError(
                f"{where}: engine field '{key}' must be an integer >= 1, got {value!r}"
            )
    if limits["min_len"] > limits["max_len"]:
        raise AMNetError(
            f"{where}: engine min_len {limits['min_len']} > max_len {limits['max_len']}"
        )
    return limits


def _cuda_memory() -> Any:
    try:
        return _CudaPython()
    except ImportError:
        pass
    try:
        return _TorchCuda()
    except ImportError:
        raise AMNetError(
            "TensorRT needs cuda-python (pip install cuda-python) or torch with CUDA for its "
            "device buffers; neither is installed"
        ) from None


class TensorRTBackend:
    """A deserialized TensorRT engine with one execution context."""

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str | None = None) -> None:

        self.path = Path(path)
        self.device = check_device(device, ("cuda",), self.name)
        # The sidecar first: a missing or bad one is reported even where TensorRT is absent.
        meta = read_plan_metadata(self.path)
        self.metadata = check_metadata(meta, str(self.path))
        limits = _engine_limits(meta.get("engine", {}), self.metadata["max_seq_len"], self.path)
        self.max_batch: int | None = limits["max_batch"]
        self.max_len, self.min_len = limits["max_len"], limits["min_len"]
        self._input_dim = int(self.metadata["input_dim"])

        trt = import_tensorrt()
        self._trt = trt
        self._cuda = _cuda_memory()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise AMNetError(
                f"{self.path}: TensorRT could not deserialize the engine (built with another "
                "TensorRT version or for another GPU?)"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if set(names) != {*INPUT_NAMES, *OUTPUT_NAMES}:
            raise AMNetError(f"{self.path}: not an AMNet engine (I/O tensors {names})")
        self.context = self.engine.create_execution_context()
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._buffers: dict[str, tuple[Any, int]] = {}  # name -> (handle, capacity in bytes)
        self._lock = threading.Lock()

    def _buffer(self, name: str, nbytes: int) -> Any:
        handle, capacity = self._buffers.get(name, (None, 0))
        if nbytes > capacity:
            if handle is not None:
                self._cuda.free(handle)
            capacity = max(nbytes, 2 * capacity)  # geometric growth: few reallocations
            handle = self._cuda.alloc(capacity)
            self._buffers[name] = (handle, capacity)
        return handle

    def run(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, lengths = check_batch(features, lengths, self._input_dim)
        batch, length = features.shape[:2]
        if self.max_batch is not None and batch > self.max_batch:
            raise AMNetError(f"{self.path}: batch {batch} exceeds the engine's {self.max_batch}")
        if not self.min_len <= length <= self.max_len:
            raise AMNetError(
                f"{self.path}: chunk length {length} outside the engine's profile "
                f"[{self.min_len}, {self.max_len}]"
            )
        host = {
            "features": np.ascontiguousarray(features, dtype=self._dtypes["features"]),
            "lengths": np.ascontiguousarray(lengths, dtype=self._dtypes["lengths"]),
        }
        with self._lock:
            if self.context is None:
                raise closed_error(self.path)
            for name, array in host.items():
                if not self.context.set_input_shape(name, array.shape):
                    raise AMNetError(f"{self.path}: input {name} {array.shape} rejected by engine")
                handle = self._buffer(name, array.nbytes)
                self._cuda.to_device(handle, array)
                self.context.set_tensor_address(name, handle[1])
            outputs = {}
            for name in OUTPUT_NAMES:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = np.empty(shape, dtype=self._dtypes[name])
                handle = self._buffer(name, outputs[name].nbytes)
                self.context.set_tensor_address(name, handle[1])
            if not self.context.execute_async_v3(self._cuda.stream_handle):
                raise AMNetError(f"{self.path}: TensorRT execution failed")
            for name in OUTPUT_NAMES:
                self._cuda.to_host(outputs[name], self._buffers[name][0])
            self._cuda.synchronize()
        return (
            outputs["scores"].astype(np.float32, copy=False),
            outputs["segments"].astype(np.float32, copy=False),
        )

    def close(self) -> None:
        with self._lock:
            for handle, _ in self._buffers.values():
                self._cuda.free(handle)
            self._buffers.clear()
            self._cuda.close()
            self.context = None
            self.engine = None

    def __repr__(self) -> str:
        return f"TensorRTBackend({str(self.path)!r})"
