"""Running an exported chunk graph over whole videos with ONNX Runtime (numpy only, no torch).

The graph computes one chunk (``features [B, T, C]``, ``lengths [B]`` -> ``scores [B, P, K]``,
``segments [B, P, 2]``). Videos longer than ``max_seq_len`` run in overlapping chunks with the
same policy as the PyTorch path (:func:`amnet.inference.predict_chunks`: windows from
:func:`amnet.postprocess.plan_chunks`, batched, each batch padded to its longest window), and the
raw chunk outputs go through the shared :func:`amnet.postprocess.postprocess_chunks`, so ONNX
Runtime and PyTorch produce detections through the same code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.postprocess import (
    PostprocessConfig,
    chunk_batches,
    config_from_test_cfg,
    postprocess_chunks,
)

__all__ = [
    "FEATURES",
    "LENGTHS",
    "detect_video_onnx",
    "open_session",
    "postprocess_config_from_metadata",
    "run_onnx_video",
]

FEATURES, LENGTHS = "features", "lengths"


def open_session(
    path: str | os.PathLike, intra_op_threads: int | None = None, providers: list[str] | None = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU provider unless ``providers`` says otherwise."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = int(intra_op_threads)
    try:
        return ort.InferenceSession(
            os.fspath(path), options, providers=providers or ["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own exception types for unreadable models
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AMNetError(f"{path}: ONNX Runtime cannot load the model ({first[:200]})") from None


def run_onnx_video(
    session: Any,
    feats: np.ndarray,
    max_seq_len: int,
    overlap: float,
    batch_size: int = 4,
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Raw graph outputs ``(scores [P, K], segments [P, 2], offset)`` per chunk of a ``[T, C]`` video.

    ``session`` is anything with ONNX Runtime's ``run(output_names, feeds)``. Mirrors
    ``amnet.inference.predict_chunks``: the same windows, ``batch_size`` of them per call, each
    call padded to its longest window, every chunk's outputs kept at the padded length (padded
    points score exactly 0, so post-processing ignores them).
    """
    if feats.ndim != 2:
        raise ValueError(f"run_onnx_video: expected features [T, C], got shape {feats.shape}")
    if batch_size < 1:
        raise ValueError(f"run_onnx_video: batch_size must be >= 1, got {batch_size}")
    outputs: list[tuple[np.ndarray, np.ndarray, int]] = []
    for x, lengths, starts in chunk_batches(feats, max_seq_len, overlap, batch_size):
        scores, segments = session.run(None, {FEATURES: x, LENGTHS: lengths})[:2]
        scores = np.asarray(scores, dtype=np.float32)
        segments = np.asarray(segments, dtype=np.float32)
        outputs.extend((scores[j], segments[j], start) for j, start in enumerate(starts))
    return outputs


def postprocess_config_from_metadata(meta: Mapping[str, Any]) -> PostprocessConfig:
    """The post-processing settings stored with an exported model (its config's ``test_cfg``)."""
    return config_from_test_cfg(meta["config"].get("test_cfg", {}))


def detect_video_onnx(
    session: Any,
    feats: np.ndarray,
    meta: Mapping[str, Any],
    duration: float,
    fps: float | None = None,
    post: PostprocessConfig | None = None,
    batch_size: int = 4,
) -> Detections:
    """Detections (seconds) of one video through an ONNX session and the model's metadata
    (as read by :func:`amnet.metadata.read_onnx_metadata`)."""
    chunks = run_onnx_video(
        session, feats, int(meta["max_seq_len"]), float(meta["chunk_overlap"]), batch_size
    )
    return postprocess_chunks(
        chunks,
        duration=duration,
        fps=fps or float(meta["fps"]),
        feature_stride=int(meta["feature_stride"]),
        num_frames=int(meta["num_frames"]),
        cfg=post or postprocess_config_from_metadata(meta),
    )
