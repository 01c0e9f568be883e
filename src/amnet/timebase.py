"""The feature-time convention, in one place (DESIGN §3). Numpy only.

A video's features are snippets of ``num_frames`` frames taken every ``feature_stride`` frames
at ``fps`` (THUMOS14 I3D: 16 frames every 4 at 30 fps). Snippet ``t`` is centred at
``(t * feature_stride + num_frames / 2) / fps`` seconds, and ``T`` snippets cover
``((T - 1) * feature_stride + num_frames) / fps`` seconds, from the first frame of the first
snippet to the last frame of the last one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["seconds_to_snippets", "snippets_duration", "snippets_to_seconds"]


def snippets_to_seconds(
    snippets: np.ndarray | float, fps: float, feature_stride: int, num_frames: int
) -> np.ndarray:
    """Snippet positions (any shape, fractional allowed) -> seconds."""
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    t = np.asarray(snippets, dtype=np.float64)
    return (t * float(feature_stride) + 0.5 * float(num_frames)) / float(fps)


def seconds_to_snippets(
    seconds: np.ndarray | float, fps: float, feature_stride: int, num_frames: int
) -> np.ndarray:
    """Seconds (any shape) -> fractional snippet positions; the inverse of
    :func:`snippets_to_seconds`."""
    if not feature_stride > 0:
        raise ValueError(f"feature_stride must be > 0, got {feature_stride}")
    s = np.asarray(seconds, dtype=np.float64)
    return (s * float(fps) - 0.5 * float(num_frames)) / float(feature_stride)


def snippets_duration(num_snippets: int, fps: float, feature_stride: int, num_frames: int) -> float:
    """Seconds covered by ``num_snippets`` snippets (0 for none)."""
    if num_snippets <= 0:
        return 0.0
    return ((num_snippets - 1) * feature_stride + num_frames) / fps
