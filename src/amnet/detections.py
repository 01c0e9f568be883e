"""The detections of one video, as parallel numpy arrays (the currency of every backend)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from amnet.errors import AMNetError


@dataclass
class Detections:
    """``segments`` ``[N, 2]`` float64 (seconds once post-processed), ``scores`` ``[N]`` float64,
    ``labels`` ``[N]`` int64 class ids."""

    segments: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        segments = np.asarray(self.segments, dtype=np.float64)
        if segments.size and (segments.ndim != 2 or segments.shape[1] != 2):
            raise ValueError(f"Detections: segments must be [N, 2], got {list(segments.shape)}")
        self.segments = segments.reshape(-1, 2)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.scores)
        if len(self.segments) != n or len(self.labels) != n:
            raise ValueError(
                f"Detections: {len(self.segments)} segments, {n} scores, {len(self.labels)} labels"
            )

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: np.ndarray) -> Detections:
        return Detections(self.segments[index], self.scores[index], self.labels[index])

    @staticmethod
    def concatenate(parts: list[Detections]) -> Detections:
        if not parts:
            return Detections.empty()
        return Detections(
            np.concatenate([p.segments for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.labels for p in parts]),
        )


def require_detections(value: Any) -> Detections:
    """``value`` itself when it is :class:`Detections`, else one AMNetError naming its type."""
    if not isinstance(value, Detections):
        raise AMNetError(f"detections must be Detections (detect_raw), got {type(value).__name__}")
    return value


def per_class_array(
    values: Any, what: str, valid: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``values`` as a float64 ``[K]`` array, one per class, each passing ``valid``; anything
    else (another shape, text, an empty list) is one AMNetError: ``what`` they must be."""
    wrong = AMNetError(
        f"{what} per class ([K]), got "
        f"{np.array2string(np.asarray(values, dtype=object), threshold=6)}"
    )
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise wrong from None
    if array.ndim != 1 or not len(array) or not valid(array).all():
        raise wrong
    return array
