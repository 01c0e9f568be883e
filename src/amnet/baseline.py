"""A prior-only baseline: what a detector scores without looking at a single feature.

From the training split it keeps two numbers per dataset: the median action length and how
often each class occurs. For a test video it tiles the video with proposals of that median
length and gives every proposal every class seen in training, scored by the class frequency.
Any model worth training must beat it by a wide margin; on the synthetic data it scores a few
percent average mAP.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amnet.annotations import VideoAnnotation, build_label_map, load_annotations, select_subset
from amnet.detections import Detections
from amnet.errors import AMNetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PriorBaseline:
    """The training statistics the baseline predicts from."""

    length: float  # median action length, seconds
    class_ids: np.ndarray  # [K'] classes seen in training
    frequencies: np.ndarray  # [K'] their share of the training actions (sums to 1)

    @classmethod
    def fit(cls, videos: Iterable[VideoAnnotation], class_names: Sequence[str]) -> PriorBaseline:
        """Statistics of ``videos``; labels are looked up by name in ``class_names``."""
        videos = list(videos)
        index = {name: i for i, name in enumerate(class_names)}
        num_classes = len(class_names)
        lengths = np.concatenate([v.segments[:, 1] - v.segments[:, 0] for v in videos] or [[]])
        try:
            labels = np.array([index[name] for v in videos for name in v.labels], dtype=np.int64)
        except KeyError as exc:
            raise AMNetError(f"training label {exc.args[0]!r} is not a known class") from None
        keep = lengths > 0
        if not keep.any():
            raise AMNetError("the training subset has no actions to take statistics from")
        counts = np.bincount(labels[keep], minlength=num_classes)
        class_ids = np.flatnonzero(counts)
        return cls(
            length=float(np.median(lengths[keep])),
            class_ids=class_ids,
            frequencies=counts[class_ids] / counts.sum(),
        )

    def predict(self, duration: float) -> Detections:
        """Equal tiles of about the median length covering ``[0, duration]``, each with every
        class; ordered by score (most frequent class first), then by time."""
        if duration <= 0:
            return Detections.empty()
        tiles = max(1, round(duration / self.length))
        edges = np.linspace(0.0, duration, tiles + 1)
        segments = np.stack([edges[:-1], edges[1:]], axis=1)
        order = np.argsort(-self.frequencies, kind="stable")
        return Detections(
            segments=np.tile(segments, (len(order), 1)),
            scores=np.repeat(self.frequencies[order], tiles),
            labels=np.repeat(self.class_ids[order], tiles),
        )


def run_baseline(
    annotations: str | os.PathLike,
    subset: str | Sequence[str],
    train_subset: str | Sequence[str] = "validation",
) -> tuple[dict[str, Detections], list[str], PriorBaseline]:
    """Fit on ``train_subset`` of an annotation file and predict every video of ``subset``.

    Returns the detections per video (sorted by id), the class names (from the whole file, so
    ids agree with training) and the fitted statistics.
    """
    videos = load_annotations(annotations)
    class_names = build_label_map(videos.values(), annotations)
    train = select_subset(videos, train_subset, annotations)
    test = select_subset(videos, subset, annotations)
    prior = PriorBaseline.fit(train.values(), class_names)
    logger.info(
        "prior from %d training videos: median action %.2f s, %d classes",
        len(train),
        prior.length,
        len(prior.class_ids),
    )
    detections = {vid: prior.predict(test[vid].duration) for vid in sorted(test)}
    return detections, class_names, prior


def dataset_annotations(data: str | os.PathLike) -> Path:
    """The annotation file of a dataset folder written by ``amnet-synth``."""
    data = Path(data)
    if not data.is_dir():
        raise AMNetError(f"{data}: dataset folder not found")
    return data / "annotations.json"
