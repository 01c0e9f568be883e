"""Class-agnostic detection fused with a video-level classifier: the ActivityNet protocol.

On ActivityNet-1.3 the field trains the localizer with one class (every action is "an action")
and takes the classes from a separate video classifier: each of a video's detections is repeated
for the classifier's ``topk`` most likely classes of that video, with the score
``sqrt(detection score * class probability)``. A model trained with ``dataset.num_classes: 1``
on a multi-class annotation file is such a localizer (every action becomes :data:`AGNOSTIC_CLASS`).

Classifier files are JSON, as the field distributes them (DESIGN §3)::

    {"results": {video_id: [p_0, ..., p_{K-1}]}, "class": [name_0, ..., name_{K-1}]}

``"class"`` may be missing; the names are then the annotation file's classes in label-id order.
A plain ``{video_id: [...]}`` object is read as ``"results"``. ActivityNet's video ids are
matched with or without their ``v_`` prefix (classifier files often drop it). Numpy only.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from amnet.annotations import VideoAnnotation, check_video_id, prefix_twin
from amnet.detections import Detections, per_class_array, require_detections
from amnet.errors import AMNetError
from amnet.fileio import read_json

__all__ = [
    "AGNOSTIC_CLASS",
    "ClassScores",
    "agnostic_ground_truth",
    "fuse_class_scores",
    "read_class_scores",
]

# The one class of a localizer trained class-agnostically on a multi-class annotation file.
AGNOSTIC_CLASS = "action"
# How many of a video's classes each detection is repeated for (the field's ActivityNet setting).
DEFAULT_TOPK = 2


@dataclass(frozen=True)
class ClassScores:
    """Video-level class probabilities: ``scores[video_id]`` is ``[K]``, ``names`` the K
    classes, in the order of the probabilities."""

    names: list[str]
    scores: dict[str, np.ndarray]
    path: str = "class scores"

    def _find(self, video_id: str) -> np.ndarray | None:
        if not isinstance(video_id, str):
            raise AMNetError(f"a video id is a string, got {video_id!r}")
        for key in (video_id, prefix_twin(video_id)):
            found = self.scores.get(key)
            if found is not None:
                return found
        return None

    def has(self, video_id: str) -> bool:
        return self._find(video_id) is not None

    def check_classes(self, videos: Iterable[VideoAnnotation]) -> None:
        """Every ground-truth label must be one of the classifier's classes (else one error
        naming the file and the first missing labels)."""
        missing = sorted({label for v in videos for label in v.labels} - set(self.names))
        if missing:
            raise AMNetError(
                f"{self.path}: the ground truth's classes {missing[:3]} are not among its "
                f"{len(self.names)} classes"
            )

    def of(self, video_id: str) -> np.ndarray:
        """The probabilities of one video (its id with or without the ``v_`` prefix)."""
        found = self._find(video_id)
        if found is None:
            raise AMNetError(f"{self.path}: no class scores for video {video_id!r}")
        return found


def read_class_scores(
    path: str | os.PathLike, class_names: Sequence[str] | None = None
) -> ClassScores:
    """Read and validate a classifier file. ``class_names`` (e.g. the annotation file's) name
    the classes when the file has no ``"class"`` list; with both, the file's list is used.

    Every problem is one AMNetError naming the file (and the video): probabilities must be
    finite, non-negative and one per class."""
    data = read_json(path, "class score file")
    if not isinstance(data, Mapping):
        raise AMNetError(f"{path}: a class score file is a JSON object")
    if "results" in data:
        results = data["results"]
    else:
        results = {k: v for k, v in data.items() if k != "class"}
    names = data.get("class")
    if names is None and class_names is not None:
        names = list(class_names)
    if names is None:
        raise AMNetError(
            f"{path}: no 'class' list of class names in the file, and no annotation file to "
            "take them from"
        )
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n for n in names)
        or len(set(names)) != len(names)
    ):
        raise AMNetError(f"{path}: 'class' must be a list of distinct non-empty names")
    if not isinstance(results, Mapping) or not results:
        raise AMNetError(f"{path}: no videos (expected 'results': {{video_id: [probabilities]}})")
    scores: dict[str, np.ndarray] = {}
    for vid, values in results.items():
        check_video_id(vid, path)
        if (
            not isinstance(values, list)
            or len(values) != len(names)
            or not all(_probability(v) for v in values)
        ):
            raise AMNetError(
                f"{path}: video {vid!r}: expected {len(names)} finite non-negative class "
                "probabilities"
            )
        scores[vid] = np.asarray(values, dtype=np.float64)
    return ClassScores(list(names), scores, str(path))


def _probability(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and value >= 0
    )


def fuse_class_scores(
    detections: Detections, probabilities: np.ndarray, topk: int = DEFAULT_TOPK
) -> Detections:
    """One video's class-agnostic detections × its ``topk`` most likely classes.

    Each detection appears once per class, scored ``sqrt(score * probability)``; labels index
    the classifier's classes. The result is sorted by score, best first; ties keep the class
    rank, then the detection order. Labels of ``detections`` are ignored."""
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise AMNetError(f"class topk must be an integer >= 1, got {topk!r}")
    require_detections(detections)
    # The file reader checks the same: a NaN or negative probability would turn every fused
    # score NaN (sqrt), and an infinite one would outrank every real detection.
    probabilities = per_class_array(
        probabilities,
        "class probabilities must be one finite, non-negative value",
        lambda p: np.isfinite(p) & (p >= 0),
    )
    topk = int(topk)
    # Stable, on the negated values: equal probabilities keep the lower class id first.
    classes = np.argsort(-probabilities, kind="stable")[:topk]
    scores = np.sqrt(probabilities[classes][:, None] * detections.scores[None, :]).reshape(-1)
    segments = np.tile(detections.segments, (len(classes), 1))
    labels = np.repeat(classes, len(detections))
    order = np.argsort(-scores, kind="stable")
    return Detections(segments[order], scores[order], labels[order])


def fuse_results(
    per_video: Mapping[str, Detections], class_scores: ClassScores, topk: int = DEFAULT_TOPK
) -> dict[str, Detections]:
    """:func:`fuse_class_scores` for every video; a video the classifier file lacks is an
    error naming it."""
    return {
        vid: fuse_class_scores(det, class_scores.of(vid), topk) for vid, det in per_video.items()
    }


def agnostic_ground_truth(
    videos: Iterable[VideoAnnotation], name: str = AGNOSTIC_CLASS
) -> dict[str, VideoAnnotation]:
    """The videos with every action relabelled ``name``: the ground truth of a class-agnostic
    evaluation (how well actions are found, whatever their class)."""
    return {
        v.video_id: dataclasses.replace(
            v, labels=[name] * len(v.labels), label_ids=np.zeros(len(v.labels), dtype=np.int64)
        )
        for v in videos
    }
