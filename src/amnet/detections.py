"""The detections of one video, as parallel numpy arrays (the currency of every backend)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
