"""ActionFormer/ActivityNet annotation files: parsing, validation, subsets and label maps.

The format (DESIGN §3)::

    {"database": {video_id: {"subset": str, "duration": float, "fps": float,
                             "annotations": [{"label": str, "segment": [s, e], "label_id": int}]}}}

Segments are in seconds. Subset names are matched case-insensitively, because real files use
both ``"Test"`` and ``"test"``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from amnet.errors import AMNetError
from amnet.fileio import read_json


@dataclass
class VideoAnnotation:
    """One video of an annotation file; ``segments`` are ``[N, 2]`` seconds."""

    video_id: str
    subset: str
    duration: float
    fps: float
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: list[str] = field(default_factory=list)
    label_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))

    def __post_init__(self) -> None:
        segments = np.asarray(self.segments, dtype=np.float64)
        if segments.size and (segments.ndim != 2 or segments.shape[1] != 2):
            raise ValueError(
                f"video {self.video_id!r}: segments must be [N, 2], got {list(segments.shape)}"
            )
        self.segments = segments.reshape(-1, 2)
        self.label_ids = np.asarray(self.label_ids, dtype=np.int64).reshape(-1)
        if not len(self.labels) == len(self.label_ids) == len(self.segments):
            raise ValueError(
                f"video {self.video_id!r}: {len(self.segments)} segments, {len(self.labels)} "
                f"labels, {len(self.label_ids)} label ids"
            )


def _number(value: object, where: str, path: os.PathLike | str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AMNetError(f"{path}: {where} must be a finite number, found {value!r}")
    return float(value)


def check_video_id(vid: object, path: os.PathLike | str) -> str:
    """A video id that is safe to become a file name (``<id>.npy``, ``<id>.png``): not empty, no
    path separator, not ``.``/``..``, no NUL or control characters. Anything else is one error
    naming the id and the file, before the id can touch a path."""
    if not isinstance(vid, str) or not vid:
        raise AMNetError(f"{path}: video id {vid!r} must be a non-empty string")
    bad = (
        "/" in vid
        or "\\" in vid
        or vid in (".", "..")
        or any(ord(c) < 32 or ord(c) == 127 for c in vid)
    )
    if bad:
        raise AMNetError(
            f"{path}: video id {vid!r} cannot name a file (separators, '..', NUL and control "
            "characters are not allowed)"
        )
    return vid


def prefix_twin(video_id: str) -> str:
    """The same video's id with ActivityNet's ``v_`` prefix added or removed (files and
    classifier outputs often carry it, annotation files not)."""
    return video_id[2:] if video_id.startswith("v_") else "v_" + video_id


def parse_database(data: object, path: os.PathLike | str) -> dict[str, VideoAnnotation]:
    """Validate the ``database`` of an annotation file and return its videos."""
    if not isinstance(data, Mapping) or not isinstance(data.get("database"), Mapping):
        raise AMNetError(f"{path}: not an annotation file (no 'database' object)")
    videos: dict[str, VideoAnnotation] = {}
    for vid, entry in data["database"].items():
        check_video_id(vid, path)
        if not isinstance(entry, Mapping):
            raise AMNetError(f"{path}: video {vid!r} is not an object")
        subset = entry.get("subset")
        if not isinstance(subset, str):
            raise AMNetError(f"{path}: video {vid!r} has no 'subset' string")
        duration = _number(entry.get("duration"), f"video {vid!r} 'duration'", path)
        fps = _number(entry.get("fps", 30.0), f"video {vid!r} 'fps'", path)
        if duration < 0 or fps <= 0:
            raise AMNetError(f"{path}: video {vid!r} has a negative duration or a non-positive fps")
        anns = entry.get("annotations", [])
        if not isinstance(anns, list):
            raise AMNetError(f"{path}: video {vid!r} 'annotations' must be a list")
        segs, labels, ids = [], [], []
        for i, ann in enumerate(anns):
            if not isinstance(ann, Mapping):
                raise AMNetError(f"{path}: video {vid!r} annotation {i} is not an object")
            seg = ann.get("segment")
            if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                raise AMNetError(
                    f"{path}: video {vid!r} annotation {i} needs 'segment': [start, end]"
                )
            s = _number(seg[0], f"video {vid!r} annotation {i} start", path)
            e = _number(seg[1], f"video {vid!r} annotation {i} end", path)
            if e < s:
                raise AMNetError(
                    f"{path}: video {vid!r} annotation {i} has a negative-length segment [{s}, {e}]"
                )
            label = ann.get("label")
            if not isinstance(label, str):
                raise AMNetError(f"{path}: video {vid!r} annotation {i} has no 'label' string")
            label_id = ann.get("label_id", -1)
            if isinstance(label_id, bool) or not isinstance(label_id, int):
                raise AMNetError(
                    f"{path}: video {vid!r} annotation {i} 'label_id' must be an integer"
                )
            segs.append((s, e))
            labels.append(label)
            ids.append(label_id)
        videos[str(vid)] = VideoAnnotation(
            video_id=str(vid),
            subset=subset,
            duration=duration,
            fps=fps,
            segments=np.asarray(segs, dtype=np.float64).reshape(-1, 2),
            labels=labels,
            label_ids=np.asarray(ids, dtype=np.int64),
        )
    return videos


def load_annotations(path: os.PathLike | str) -> dict[str, VideoAnnotation]:
    """Read and validate an annotation file (every subset)."""
    return parse_database(read_json(path, "annotation file"), path)


def subset_names(videos: Mapping[str, VideoAnnotation]) -> list[str]:
    return sorted({v.subset for v in videos.values()})


def select_subset(
    videos: Mapping[str, VideoAnnotation],
    subset: str | Iterable[str],
    path: os.PathLike | str = "annotations",
) -> dict[str, VideoAnnotation]:
    """The videos of one or more subsets (case-insensitive); an empty result is an error."""
    wanted = {subset.lower()} if isinstance(subset, str) else {s.lower() for s in subset}
    chosen = {vid: v for vid, v in videos.items() if v.subset.lower() in wanted}
    if not chosen:
        raise AMNetError(
            f"{path}: subset {sorted(wanted)} has no videos (subsets present: {subset_names(videos)})"
        )
    return chosen


# Label ids index the class list (their gaps get placeholder names): a larger one is a typo or
# a foreign id space, and would allocate a list that large.
MAX_LABEL_ID = 65535


def build_label_map(
    videos: Iterable[VideoAnnotation], path: os.PathLike | str = "annotations"
) -> list[str]:
    """Class names indexed by label id.

    Uses the file's ``label_id`` fields when every annotation has one (ActionFormer files do),
    otherwise numbers the labels in sorted order.
    """
    pairs: dict[str, int] = {}
    have_ids = True
    for video in videos:
        for label, label_id in zip(video.labels, video.label_ids.tolist(), strict=True):
            if label_id < 0:
                have_ids = False
            if label in pairs and pairs[label] != label_id and have_ids:
                raise AMNetError(
                    f"{path}: label {label!r} appears with two label_ids ({pairs[label]}, {label_id})"
                )
            pairs.setdefault(label, label_id)
    if not pairs:
        return []
    if not have_ids:
        return sorted(pairs)
    by_id: dict[int, str] = {}
    for label, label_id in pairs.items():
        if label_id in by_id and by_id[label_id] != label:
            raise AMNetError(
                f"{path}: label_id {label_id} is used by {by_id[label_id]!r} and {label!r}"
            )
        by_id[label_id] = label
    size = max(by_id) + 1
    if size > MAX_LABEL_ID + 1:
        raise AMNetError(
            f"{path}: label_id {size - 1} is out of range: label ids number the classes "
            f"0..K-1 (at most {MAX_LABEL_ID})"
        )
    names = [by_id.get(i, f"class_{i}") for i in range(size)]
    clash = next((n for i, n in enumerate(names) if i not in by_id and n in pairs), None)
    if clash is not None:
        # Two classes of one name would split its detections between them, silently.
        raise AMNetError(
            f"{path}: label_id {names.index(clash, 0)} is unused and its placeholder name "
            f"{clash!r} is also a label; number the labels 0..K-1"
        )
    return names


def dump_database(videos: Iterable[VideoAnnotation], version: str = "amnet") -> dict:
    """The JSON object for a set of videos (inverse of :func:`parse_database`)."""
    database = {}
    for v in videos:
        database[v.video_id] = {
            "subset": v.subset,
            "duration": round(float(v.duration), 3),
            "fps": float(v.fps),
            "annotations": [
                {
                    "label": label,
                    "segment": [round(float(s), 3), round(float(e), 3)],
                    "label_id": int(i),
                }
                for (s, e), label, i in zip(
                    v.segments.tolist(), v.labels, v.label_ids.tolist(), strict=True
                )
            ],
        }
    return {"version": version, "database": database}
