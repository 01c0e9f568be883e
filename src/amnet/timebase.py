"""The feature-time convention, in one place (DESIGN §3). Numpy only.

A video's features are snippets of ``num_frames`` frames taken every ``feature_stride`` frames
at ``fps`` (THUMOS14 I3D: 16 frames every 4 at 30 fps). Snippet ``t`` is centred at
``(t * feature_stride + num_frames / 2) / fps`` seconds, and ``T`` snippets cover
``((T - 1) * feature_stride + num_frames) / fps`` seconds, from the first frame of the first
snippet to the last frame of the last one.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "resample_snippets",
    "resampled_timebase",
    "seconds_to_snippets",
    "snippets_duration",
    "snippets_to_seconds",
]


def snippets_to_seconds(
    snippets: np.ndarray | float, fps: float, feature_stride: float, num_frames: float
) -> np.ndarray:
    """Snippet positions (any shape, fractional allowed) -> seconds."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    t = np.asarray(snippets, dtype=np.float64)
    return (t * float(feature_stride) + 0.5 * float(num_frames)) / float(fps)


def seconds_to_snippets(
    seconds: np.ndarray | float, fps: float, feature_stride: float, num_frames: float
) -> np.ndarray:
    """Seconds (any shape) -> fractional snippet positions; the inverse of
    :func:`snippets_to_seconds`."""
    if not feature_stride > 0:
        raise ValueError(f"feature_stride must be > 0, got {feature_stride}")
    s = np.asarray(seconds, dtype=np.float64)
    return (s * float(fps) - 0.5 * float(num_frames)) / float(feature_stride)


def snippets_duration(
    num_snippets: int, fps: float, feature_stride: float, num_frames: float
) -> float:
    """Seconds covered by ``num_snippets`` snippets (0 for none)."""
    if num_snippets <= 0:
        return 0.0
    return ((num_snippets - 1) * feature_stride + num_frames) / fps


def resample_snippets(features: np.ndarray, length: int) -> np.ndarray:
    """``[T, C]`` features linearly resampled to ``[length, C]`` float32 (``T >= 1``).

    The grid of ``torch.nn.functional.interpolate(mode="linear", align_corners=False)``, the
    field's fixed-length features (ActivityNet): output row ``i`` samples input position
    ``(i + 0.5) * T / length - 0.5``, clamped to the first and last rows. Only the rows it
    samples are read, so a memory-mapped video of any length costs ``length`` rows.
    """
    total = features.shape[0]
    if total < 1 or length < 1:
        raise ValueError(f"resample_snippets: need T >= 1 and length >= 1, got {total}, {length}")
    position = (np.arange(length, dtype=np.float64) + 0.5) * (total / length) - 0.5
    position = np.clip(position, 0.0, total - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, total - 1)
    weight = (position - low).astype(np.float32)[:, None]
    rows = np.unique(np.concatenate([low, high]))
    block = np.asarray(features[rows], dtype=np.float32)  # one gather: mmap-friendly
    at = np.searchsorted(rows, low), np.searchsorted(rows, high)
    return block[at[0]] * (1.0 - weight) + block[at[1]] * weight


def resampled_timebase(
    num_snippets: int, feature_stride: float, num_frames: float, length: int
) -> tuple[float, float]:
    """``(feature_stride, num_frames)`` of a video's ``num_snippets`` snippets resampled to
    ``length``: the frames they cover, ``(T - 1) * stride + num_frames``, split evenly into
    ``length`` snippets that each span their own stride (the field's ActivityNet convention).
    The video's duration is unchanged."""
    stride = ((num_snippets - 1) * feature_stride + num_frames) / length
    return stride, stride
