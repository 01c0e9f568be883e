"""``Detector``: per-snippet features of a video in, action instances (seconds) out.

::

    from amnet.deploy import Detector

    detector = Detector("model.onnx")                # or model.plan / ckpt.pt; device="cuda"
    for d in detector(features):                     # features: [T, C] numpy array
        print(d.label, d.start, d.end, d.score)
    raw = detector.detect_raw(features)              # amnet.detections.Detections (arrays)
    batch = detector.detect_many([f1, f2, f3])       # list of lists
    stream = detector.stream()                       # a live video: stream.push(block), flush()

Everything but the graph comes from the model's metadata (config, class names, fps, feature
stride, frames per snippet, ``max_seq_len``, chunk overlap, post-processing settings); fps,
stride and frames may be overridden. Videos longer than ``max_seq_len`` run in overlapping
chunks (:func:`amnet.postprocess.plan_chunks`, batched and padded as the PyTorch evaluation
does), and the raw chunk outputs of every backend go through the one shared
:func:`amnet.postprocess.postprocess_chunks`.

Duration: a video of ``T`` snippets lasts what its snippets cover, from the first frame of the
first snippet to the last frame of the last one::

    duration = ((T - 1) * feature_stride + num_frames) / fps

(THUMOS14: ``(4 T + 12) / 30`` s). Detections are clipped to ``[0, duration]``; pass
``duration=`` to a call when the true video length is known (e.g. from an annotation file).

Inputs: any real float or integer ``[T, C]`` array (float16/32/64, non-contiguous views) is
accepted and cast to contiguous float32; ``T = 0`` gives no detections. A wrong rank or channel
count, NaN/Inf (also after the cast: float64 beyond float32's range) or a non-numeric dtype
raise :class:`amnet.errors.AMNetError` with a one-line message.

A Detector holds no per-call state: one instance may serve many threads at once.

The batch paths (:meth:`Detector.detect_raw_many`, :meth:`Detector.detect_raw_iter`) make
their backend calls on a thread of the Detector's, one call in flight and the next queued: the
caller's thread meanwhile takes the next video (a generator may be reading it) and
post-processes the videos whose windows are back. Batch calls from several threads share that
thread, so their backend calls take turns (on a CPU one call already uses every core). Each
video is checked as :meth:`Detector.detect_raw` checks it (the error names its index), and a
Detector closed under a running batch says so.

Post-processing (decoding, NMS, score voting) runs on the CPU. With ``postprocess_workers=N``,
:meth:`Detector.detect_raw_many` hands each video to a pool of N processes as soon as its last
window is back from the backend, so it overlaps the backend calls of the next videos and
spreads over N cores (what a GPU host needs: there, one core's post-processing takes longer
than the backend). The pool is started on first use ("spawn": the calling script needs the
usual ``if __name__ == "__main__":`` guard) and stopped by :meth:`Detector.close`. A worker
that dies (killed by a signal or the out-of-memory killer) fails the call that was using it with
a one-line :class:`~amnet.errors.AMNetError`; the Detector's next call starts a new pool.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amnet import __version__
from amnet.cpus import fit_to_cpus
from amnet.deploy.backends import Backend, closed_error, open_backend
from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.fileio import file_sha256, first_non_finite
from amnet.metadata import DEFAULT_CHUNK_BATCH, chunk_batch_for
from amnet.postprocess import (
    PostprocessConfig,
    RawChunk,
    config_from_test_cfg,
    plan_chunks,
    postprocess_chunks,
    run_chunked,
)
from amnet.timebase import resample_snippets, resampled_timebase, snippets_duration

if TYPE_CHECKING:
    from amnet.deploy.stream import StreamingDetector

logger = logging.getLogger(__name__)

__all__ = ["Detection", "Detector", "snippets_duration"]

DEFAULT_BATCH_SIZE = DEFAULT_CHUNK_BATCH  # on GPUs; CPUs take one chunk per call


@dataclass(frozen=True)
class Detection:
    """One action instance: ``[start, end]`` in seconds, its class and its score."""

    start: float
    end: float
    label: str
    label_id: int
    score: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def _score(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not 0.0 <= float(value) <= 1.0
    ):
        raise AMNetError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class OutputOverflow(AMNetError):
    """The model's outputs are NaN or Inf for these inputs (features of extreme magnitude)."""


class VideoError(AMNetError):
    """One video of a batch path that the model cannot answer (its outputs overflow):
    ``index`` is its place in the input, ``reason`` why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"video {index}: {reason}")
        self.index, self.reason = index, reason


def _identity(path: Path) -> tuple[int, ...] | None:
    """Which file ``path`` is now (device, inode, size, modification time), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _count(values: Any, name: str, lazy: str | None = None) -> int:
    """``len(values)`` of a per-video sequence; anything without one is a clear error (a
    generator has no length: ``lazy`` names the method that takes one)."""
    try:
        return len(values)
    except TypeError:
        hint = f"; for a generator use {lazy}" if lazy else ""
        raise AMNetError(
            f"{name} must be a list or tuple (one item per video), got {type(values).__name__}"
            + hint
        ) from None


def _positive(name: str, value: Any, integer: bool = False) -> Any:
    if value is None:
        return None
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise AMNetError(f"{name} must be {kind} > 0, got {value!r}")
    if value <= 0:
        raise AMNetError(f"{name} must be > 0, got {value!r}")
    return int(value) if integer else float(value)


def _postprocess_video(
    chunks: list[RawChunk],
    duration: float,
    fps: float,
    feature_stride: float,
    num_frames: float,
    post: PostprocessConfig,
    min_score: float | None,
) -> Detections:
    """One video's raw chunk outputs -> detections (module level: a pool worker runs it)."""
    dets = postprocess_chunks(
        chunks,
        duration=duration,
        fps=fps,
        feature_stride=feature_stride,
        num_frames=num_frames,
        cfg=post,
        min_score=min_score,
    )
    if min_score is not None:
        dets = dets.take(np.flatnonzero(dets.scores >= min_score))
    return dets


def _ignore_sigint() -> None:
    """Post-processing processes leave Ctrl-C to the caller, which stops them through the pool
    (a terminal sends SIGINT to every process of the job: each would print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Detector:
    """Temporal action detection with an exported or checkpointed AMNet model.

    Args:
        path: ``.onnx`` (ONNX Runtime), ``.plan``/``.engine`` (TensorRT, with its
            ``<plan>.json`` sidecar) or ``.pt``/``.pth`` (PyTorch checkpoint).
        device: ``"cpu"`` or ``"cuda"``; ``None`` picks the backend's natural device (CPU, or
            CUDA for TensorRT). A device that is not available is an error, never a fallback.
        min_score: drop detections scoring below this (after NMS).
        top_k: at most this many detections per video (replaces the model's
            ``max_detections``, so it may also raise it).
        fps, feature_stride, num_frames: override the model's feature convention.
        intra_op_threads: CPU threads per inference call (ONNX Runtime, PyTorch).
        batch_size: chunks per backend call for long videos (bounded by TensorRT's profile);
            default 1 on a CPU, 4 on a GPU.
        precision: ``"fp32"`` or ``"bf16"`` (``.pt`` models under bfloat16 autocast, or the
            OpenVINO runtime in bf16, for a static INT8 model its float part; on hardware with
            bf16 arithmetic).
        runtime: ``"openvino"`` runs an ``.onnx`` model on OpenVINO instead of ONNX Runtime
            (the ``[openvino]`` extra; CPU only).
        postprocess_workers: processes that post-process the videos of
            :meth:`detect_raw_many` while the backend runs (see the module doc); default none.

    Raises:
        AMNetError: a missing, unreadable or unknown model, or bad settings (one line).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | None = None,
        *,
        min_score: float | None = None,
        top_k: int | None = None,
        fps: float | None = None,
        feature_stride: int | None = None,
        num_frames: int | None = None,
        intra_op_threads: int | None = None,
        batch_size: int | None = None,
        precision: str = "fp32",
        runtime: str | None = None,
        postprocess_workers: int | None = None,
    ) -> None:
        min_score = None if min_score is None else _score("min_score", min_score)
        top_k = _positive("top_k", top_k, integer=True)
        fps = _positive("fps", fps)
        feature_stride = _positive("feature_stride", feature_stride, integer=True)
        num_frames = _positive("num_frames", num_frames, integer=True)
        batch_size = _positive("batch_size", batch_size, integer=True)
        self.postprocess_workers: int = fit_to_cpus(
            "postprocess_workers",
            _positive("postprocess_workers", postprocess_workers, integer=True) or 0,
        )
        self._pool: ProcessPoolExecutor | None = None
        self._runners: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

        # What file a .pt model came from, to name its SHA-256 later (describe()).
        self._loaded_identity = _identity(Path(path))
        self._sha256: str | None = None
        self.backend: Backend = open_backend(path, device, intra_op_threads, precision, runtime)
        self.precision = precision
        meta = self.backend.metadata
        self.path = Path(path)
        self.metadata: dict[str, Any] = dict(meta)
        self.class_names: list[str] = [str(n) for n in meta["class_names"]]
        self.input_dim = int(meta["input_dim"])
        self.num_classes = int(meta["num_classes"])
        self.max_seq_len = int(meta["max_seq_len"])
        self.chunk_overlap = float(meta["chunk_overlap"])
        self.fps = fps if fps is not None else float(meta["fps"])
        self.feature_stride = (
            feature_stride if feature_stride is not None else int(meta["feature_stride"])
        )
        self.num_frames = num_frames if num_frames is not None else int(meta["num_frames"])
        self.min_score = None if min_score is None else float(min_score)
        self.top_k = top_k
        # ActivityNet-style models see every video resampled to max_seq_len snippets.
        self.force_upsampling = bool(meta.get("force_upsampling", False))
        # A TensorRT profile may allow shorter chunks or fewer of them per call than the model.
        engine_len = getattr(self.backend, "max_len", None)
        if engine_len is not None and engine_len < self.max_seq_len and self.force_upsampling:
            raise AMNetError(
                f"{self.path}: engine profile max length {engine_len} < max_seq_len "
                f"{self.max_seq_len}, the length every video is resampled to; rebuild the "
                f"engine with --max-len {self.max_seq_len}"
            )
        if engine_len is not None and engine_len < self.max_seq_len:
            logger.warning(
                "%s: engine profile max length %d < max_seq_len %d; chunking at %d",
                self.path,
                engine_len,
                self.max_seq_len,
                engine_len,
            )
            self.max_seq_len = int(engine_len)
        max_batch = self.backend.max_batch
        if batch_size is None:
            batch_size = chunk_batch_for(self.backend.device)
        self.batch_size = min(batch_size, max_batch) if max_batch else batch_size

        post = config_from_test_cfg(meta["config"].get("test_cfg", {}))
        if top_k is not None:
            post = replace(post, max_detections=top_k)
        self.postprocess: PostprocessConfig = post

    # -- properties -------------------------------------------------------------------------

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    def describe(self) -> dict[str, Any]:
        """What this Detector runs, as JSON-ready values: the model file and how it runs
        (backend, device, precision of its float part, quantization), the feature convention
        and window it expects, its classes, and where it came from (the checkpoint's SHA-256,
        which weights, the amnet version that exported it). ``amnet-infer --describe`` prints
        it and ``amnet-serve`` answers it at ``GET /v1/model``. For a ``.pt`` model the
        checkpoint's SHA-256 is that of the file it loaded, read on the first call: None, with
        a warning, when the file was changed, replaced or moved since it was loaded (a
        training run that writes ``best.pt`` again) and the loaded model no longer has one."""
        meta = self.metadata
        engine = meta.get("engine") or {}
        if self.precision != "fp32":
            precision = self.precision  # bf16 asked for: OpenVINO or autocast lowers the model
        else:
            precision = str(engine.get("precision") or meta.get("precision") or "fp32")
        checkpoint: str | None
        exported_with: str | None
        if self.backend_name == "torch":
            checkpoint, exported_with = self._loaded_file_sha256(), None
        else:
            checkpoint, exported_with = meta.get("checkpoint_sha256"), meta.get("amnet_version")
        return {
            "model": self.path.name,
            "backend": self.backend_name,
            "device": self.device,
            "precision": precision,
            "quantization": meta.get("quantization"),
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "input_dim": self.input_dim,
            "fps": self.fps,
            "feature_stride": self.feature_stride,
            "num_frames": self.num_frames,
            "max_seq_len": self.max_seq_len,
            "force_upsampling": self.force_upsampling,
            "chunk_overlap": self.chunk_overlap,
            "max_detections": self.postprocess.max_detections,
            "min_score": self.min_score,
            "weights": meta.get("weights"),
            "checkpoint_sha256": checkpoint or None,
            "exported_with": exported_with,
            "amnet_version": __version__,
        }

    def _loaded_file_sha256(self) -> str | None:
        """The SHA-256 of the checkpoint this Detector loaded, hashed once and only while the
        file at ``path`` is still that file (hashing every checkpoint on opening would cost a
        paper-size one about half a second)."""
        if self._sha256 is None:
            sha = None
            if _identity(self.path) == self._loaded_identity:
                sha = file_sha256(self.path)
            if sha is None or _identity(self.path) != self._loaded_identity:
                logger.warning(
                    "%s: changed, replaced or moved since it was loaded; the loaded model's "
                    "SHA-256 is unknown",
                    self.path,
                )
                return None
            self._sha256 = sha
        return self._sha256

    def duration_of(self, num_snippets: int) -> float:
        """The duration (seconds) of a video of ``num_snippets`` snippets (see the module doc)."""
        return snippets_duration(num_snippets, self.fps, self.feature_stride, self.num_frames)

    def timebase(self, num_snippets: int) -> tuple[float, float]:
        """``(feature_stride, num_frames)`` of the snippets the model sees for a video of
        ``num_snippets``: the model's own, or those of the video resampled to
        ``max_seq_len`` (``force_upsampling``)."""
        if not self.force_upsampling:
            return self.feature_stride, self.num_frames
        return resampled_timebase(
            num_snippets, self.feature_stride, self.num_frames, self.max_seq_len
        )

    def model_input(self, array: np.ndarray) -> np.ndarray:
        """A prepared video as the model takes it: resampled to ``max_seq_len`` snippets for a
        ``force_upsampling`` model, else itself."""
        if self.force_upsampling and array.shape[0]:
            return resample_snippets(array, self.max_seq_len)
        return array

    # -- input ------------------------------------------------------------------------------

    def prepare(self, features: Any, name: str = "features") -> np.ndarray:
        """``features`` validated and cast to a contiguous float32 ``[T, C]`` array."""
        if isinstance(features, (str, bytes, os.PathLike)):
            raise AMNetError(
                f"{name}: got a path ({os.fsdecode(features)!r}), not an array; read the file "
                "first (amnet.fileio.read_features(path, detector.input_dim), or np.load)"
            )
        if not isinstance(features, np.ndarray):
            if type(features).__module__.startswith("torch") and hasattr(features, "detach"):
                # A tensor that needs grad, lives on a GPU or is bfloat16 has no direct numpy
                # view: take its values as they are (float32 for bfloat16, which numpy lacks).
                features = features.detach().cpu()
                if str(features.dtype) == "torch.bfloat16":
                    features = features.float()
            try:
                features = np.asarray(features)
            except (TypeError, ValueError) as exc:
                raise AMNetError(f"{name}: not an array ({exc})") from None
        kind = features.dtype.kind
        if kind not in "fiu":
            raise AMNetError(
                f"{name}: expected a real float array, got dtype {features.dtype}"
                + (" (complex)" if kind == "c" else "")
            )
        if features.ndim != 2:
            raise AMNetError(
                f"{name}: expected shape [T, {self.input_dim}], got {list(features.shape)}"
            )
        if features.shape[1] != self.input_dim:
            raise AMNetError(
                f"{name}: {features.shape[1]} channels, the model expects {self.input_dim}"
            )
        with np.errstate(over="ignore"):  # out-of-range float64 becomes inf, reported below
            array = np.ascontiguousarray(features, dtype=np.float32)
        bad = first_non_finite(array) if array.size else None  # blockwise: no T x C temporary
        if bad is not None:
            t, c = bad, int(np.argwhere(~np.isfinite(array[bad]))[0, 0])
            overflow = bool(np.isfinite(features[t, c]))  # finite before the cast: out of range
            raise AMNetError(
                f"{name}: features contain NaN or Inf (first at snippet {t}, channel {c}"
                + (", beyond float32's range)" if overflow else ")")
            )
        return array

    # -- inference --------------------------------------------------------------------------

    def run_chunks(self, features: np.ndarray) -> list[RawChunk]:
        """Raw backend outputs ``(scores [P, K], segments [P, 2], offset, length)`` per chunk.

        ``features`` must already be prepared (:meth:`prepare`). Chunks are batched
        ``batch_size`` at a time, each call padded to its longest chunk (as
        :func:`amnet.inference.predict_chunks` does).
        """
        return run_chunked(
            self.run_backend, features, self.max_seq_len, self.chunk_overlap, self.batch_size
        )

    def run_backend(
        self, features: np.ndarray, lengths: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One backend call (``[B, T, C]`` windows -> scores, segments), its outputs checked:
        finite features of extreme magnitude overflow inside the model, and NaN scores would
        otherwise vanish in post-processing, a silent wrong answer."""
        scores, segments = self.backend.run(features, lengths)
        if not (np.isfinite(scores).all() and np.isfinite(segments).all()):
            largest = float(np.abs(features).max()) if features.size else 0.0
            raise OutputOverflow(
                "the model's outputs are NaN or Inf for these features (the largest magnitude "
                f"is {largest:.3g}; features of extreme magnitude overflow inside the model)"
            )
        return scores, segments

    def detect_raw(
        self,
        features: Any,
        duration: float | None = None,
        fps: float | None = None,
        *,
        top_k: int | None = None,
        min_score: float | None = None,
    ) -> Detections:
        """Detections of one ``[T, C]`` video as arrays (segments in seconds, sorted by score).

        ``fps`` overrides the frame rate for this video only (annotation files carry one per
        video); ``top_k`` and ``min_score`` override the detector's for this call."""
        fps = self.fps if fps is None else _positive("fps", fps)
        post = self.postprocess
        if top_k is not None:
            post = replace(post, max_detections=_positive("top_k", top_k, integer=True))
        min_score = self.min_score if min_score is None else _score("min_score", min_score)
        array = self.prepare(features)
        if duration is None:
            duration = snippets_duration(array.shape[0], fps, self.feature_stride, self.num_frames)
        elif (
            isinstance(duration, bool)
            or not isinstance(duration, (int, float, np.integer, np.floating))
            or not math.isfinite(duration)
            or duration < 0
        ):
            raise AMNetError(f"duration must be a finite number >= 0, got {duration!r}")
        if array.shape[0] == 0:
            return Detections.empty()
        chunks = self.run_chunks(self.model_input(array))
        stride, frames = self.timebase(array.shape[0])
        return _postprocess_video(chunks, float(duration), fps, stride, frames, post, min_score)

    def _runner(self) -> ThreadPoolExecutor:
        """The thread that makes the backend calls of the batch paths."""
        with self._pool_lock:
            if self._closed:
                raise closed_error(self.path)
            if self._runners is None:
                self._runners = ThreadPoolExecutor(1, thread_name_prefix="amnet-run")
            return self._runners

    def _executor(self) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise closed_error(self.path)
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.postprocess_workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_ignore_sigint,
                )
            return self._pool

    def to_detections(self, dets: Detections) -> list[Detection]:
        """Arrays -> :class:`Detection` objects with class names."""
        names = self.class_names
        return [
            Detection(float(s), float(e), names[c], int(c), float(score))
            for (s, e), score, c in zip(
                dets.segments.tolist(), dets.scores.tolist(), dets.labels.tolist(), strict=True
            )
        ]

    def __call__(
        self,
        features: Any,
        duration: float | None = None,
        *,
        top_k: int | None = None,
        min_score: float | None = None,
    ) -> list[Detection]:
        """Detections of one ``[T, C]`` video, best first (``top_k``/``min_score``: this call's
        own cut)."""
        return self.to_detections(
            self.detect_raw(features, duration, top_k=top_k, min_score=min_score)
        )

    def detect_raw_many(
        self,
        videos: Sequence[Any],
        top_k: Sequence[int | None] | None = None,
        min_score: Sequence[float | None] | None = None,
    ) -> list[Detections]:
        """:meth:`detect_raw` of several videos, their windows packed together into backend
        calls of ``batch_size`` (what pays on a GPU; on a CPU it is one window per call, as
        for one video). Each result equals that video's own :meth:`detect_raw`; ``top_k`` and
        ``min_score``, when given, hold one value (or None) per video."""
        n = _count(videos, "videos", "detect_raw_iter")
        top_k = [None] * n if top_k is None else top_k
        min_score = [None] * n if min_score is None else min_score
        for name, values in (("top_k", top_k), ("min_score", min_score)):
            if _count(values, name) != n:
                raise AMNetError(f"{name}: {len(values)} values for {n} videos")
        jobs = []
        for video, k, floor in zip(videos, top_k, min_score, strict=True):
            post = self.postprocess
            if k is not None:
                post = replace(post, max_detections=_positive("top_k", k, integer=True))
            floor = self.min_score if floor is None else _score("min_score", floor)
            jobs.append((video, post, floor))
        return list(self._pipeline(jobs))

    def detect_raw_iter(self, videos: Iterable[Any]) -> Iterator[Detections]:
        """Detections of a stream of videos, in order, as they are ready.

        ``videos`` is consumed lazily (a generator that reads files may feed it): windows of
        consecutive videos share backend calls as in :meth:`detect_raw_many`, and with
        ``postprocess_workers`` the pool post-processes while the next windows run. At most
        a few videos per worker wait in the pool; memory does not grow with the stream."""
        return self._pipeline((v, self.postprocess, self.min_score) for v in videos)

    def _pipeline(
        self, jobs: Iterable[tuple[np.ndarray, PostprocessConfig, float | None]]
    ) -> Iterator[Detections]:
        """Jobs ``(video, post, min_score)`` -> their detections, in order.

        Backend calls run on the Detector's runner thread, one in flight and the next one
        queued: the calling thread meanwhile takes the next video from ``jobs`` (a generator
        may be reading it) and post-processes the videos whose windows are back."""
        pool = self._executor() if self.postprocess_workers else None
        try:
            yield from self._run_pipeline(jobs, pool)
        except BrokenProcessPool:
            # A dead worker breaks the whole pool for good: drop it so that the next call
            # starts a new one, instead of every later call failing the same way.
            assert pool is not None
            with self._pool_lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise AMNetError(
                "a post-processing worker process died (killed, or out of memory; a script "
                'that uses postprocess_workers needs the `if __name__ == "__main__":` guard); '
                "the next call starts new workers"
            ) from None
        except (RuntimeError, CancelledError):  # (BrokenProcessPool, handled above, is one)
            # close() from another thread (or between two next() calls) shut the runner and
            # the pool down under this pipeline: say so as every other call after close does.
            if self._closed:
                raise closed_error(self.path) from None
            raise

    def _run_pipeline(
        self,
        jobs: Iterable[tuple[np.ndarray, PostprocessConfig, float | None]],
        pool: ProcessPoolExecutor | None,
    ) -> Iterator[Detections]:
        runner = self._runner()
        waiting_limit = 4 * self.postprocess_workers
        # One slot per video in input order: [result, raw outputs, settings]. The result is
        # None until its last window is back, then its Detections (or their Future in the pool).
        slots: deque[list[Any]] = deque()
        # Windows not yet run: (slot, video, start, end).
        queue: deque[tuple[list[Any], np.ndarray, int, int]] = deque()
        # Backend calls in flight, oldest first: (their windows, the call's Future).
        running: deque[tuple[list[tuple[list[Any], np.ndarray, int, int]], Future]] = deque()

        def submit() -> None:
            group = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            if len(group) == 1:
                _, video, start, end = group[0]
                x = video[None, start:end]
            else:
                longest = max(end - start for _, _, start, end in group)
                x = np.zeros((len(group), longest, self.input_dim), np.float32)
                for j, (_, video, start, end) in enumerate(group):
                    x[j, : end - start] = video[start:end]
            lengths = np.array([end - start for _, _, start, end in group], dtype=np.int64)
            running.append((group, runner.submit(self.run_backend, x, lengths)))

        def collect(limit: int) -> None:
            """Wait for the oldest calls until at most ``limit`` are in flight."""
            while len(running) > limit:
                group, call = running.popleft()
                try:
                    scores, segments = call.result()
                except OutputOverflow as exc:  # which video's? (a call may hold several)
                    raise self._failed_video(group, exc) from None
                scores = np.asarray(scores, dtype=np.float32)
                segments = np.asarray(segments, dtype=np.float32)
                for j, (slot, video, start, end) in enumerate(group):
                    slot[1].append((scores[j], segments[j], start, end - start))
                    if end == video.shape[0]:  # its last window: post-process, drop raw outputs
                        outputs, (post, floor, duration, stride, frames) = slot[1], slot[2]
                        slot[1] = None
                        job = (outputs, duration, self.fps, stride, frames, post, floor)
                        slot[0] = (
                            _postprocess_video(*job)
                            if pool is None
                            else pool.submit(_postprocess_video, *job)
                        )

        def ready(final: bool) -> Iterator[Detections]:
            while slots and slots[0][0] is not None:
                head = slots[0][0]
                if isinstance(head, Future):
                    if not (final or head.done() or len(slots) > waiting_limit):
                        return
                    head = head.result()
                slots.popleft()
                yield head

        for index, (video, post, floor) in enumerate(jobs):
            # Validated as detect_raw validates (prepare() on a prepared array is one scan).
            video = self.prepare(video, name=f"video {index}")
            length = video.shape[0]
            slot: list[Any] = [
                None, [], (post, floor, self.duration_of(length), *self.timebase(length)), index
            ]  # fmt: skip
            slots.append(slot)
            if length == 0:
                slot[0] = Detections.empty()
            else:
                video = self.model_input(video)
                for start, end in plan_chunks(video.shape[0], self.max_seq_len, self.chunk_overlap):
                    queue.append((slot, video, start, end))
            while len(queue) >= self.batch_size:
                submit()
                collect(1)
            yield from ready(final=False)
        while queue:
            submit()
            collect(1)
        collect(0)
        yield from ready(final=True)

    def _failed_video(
        self, group: list[tuple[list[Any], np.ndarray, int, int]], exc: OutputOverflow
    ) -> VideoError:
        """Which video of a failed backend call is the cause: its windows run alone (a call
        may hold the windows of several videos); the first video's when none fails alone."""
        for slot, video, start, end in group:
            try:
                self.run_backend(video[None, start:end], np.array([end - start], dtype=np.int64))
            except OutputOverflow as own:
                return VideoError(slot[3], str(own))
        return VideoError(group[0][0][3], str(exc))

    def detect_many(
        self, videos: Sequence[Any], durations: Sequence[float | None] | None = None
    ) -> list[list[Detection]]:
        """Detections of several videos (in order); ``durations`` optional, one per video."""
        _count(videos, "videos", "detect_raw_iter")
        if durations is not None and _count(durations, "durations") != len(videos):
            raise AMNetError(f"{len(durations)} durations for {len(videos)} videos")
        return [self(v, None if durations is None else durations[i]) for i, v in enumerate(videos)]

    def stream(self) -> StreamingDetector:
        """A :class:`~amnet.deploy.stream.StreamingDetector` for one live video: push feature
        blocks, get the detections that became final (see :mod:`amnet.deploy.stream`)."""
        from amnet.deploy.stream import StreamingDetector

        return StreamingDetector(self)

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
            runners, self._runners = self._runners, None
        # Work queued and not started is dropped: closing mid-stream (a stopped command, a
        # caller that broke out of detect_raw_iter) does not wait for results nobody reads.
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if runners is not None:
            runners.shutdown(cancel_futures=True)
        self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Detector cannot be pickled (it holds a loaded model and threads); pass its model "
            "path and open a Detector where it runs"
        )

    def __repr__(self) -> str:
        return (
            f"Detector({str(self.path)!r}, backend={self.backend.name}, device={self.device}, "
            f"classes={self.num_classes}, max_seq_len={self.max_seq_len})"
        )
