"""ActivityNet results JSON: writing detections out and reading them back, validated.

The format (DESIGN §3)::

    {"version": str,
     "results": {video_id: [{"label": str, "label_id": int, "score": float,
                             "segment": [start, end]}]},
     "external_data": {}}

Segments are in seconds. Scores and bounds are written at full float precision so that a file
round-trips exactly (rounding would also create score ties that change the metric).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from amnet.annotations import check_video_id
from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.fileio import atomic_write_json, read_json


def results_to_json(
    per_video: Mapping[str, Detections], class_names: Sequence[str], version: str = "amnet"
) -> dict:
    """The results JSON object for ``per_video`` detections (class ids index ``class_names``)."""
    num_classes = len(class_names)
    results: dict[str, list[dict]] = {}
    for vid, det in per_video.items():
        # What read_results refuses is not written: an id that cannot name a file, a segment
        # that ends before it starts.
        check_video_id(vid, "results")
        labels = det.labels.tolist()
        if labels and (min(labels) < 0 or max(labels) >= num_classes):
            raise AMNetError(f"video {vid!r}: class id outside [0, {num_classes})")
        if not (np.isfinite(det.scores).all() and np.isfinite(det.segments).all()):
            # json.dumps would write NaN/Infinity, which is not JSON.
            raise AMNetError(f"video {vid!r}: non-finite score or segment bound")
        if (det.segments[:, 1] < det.segments[:, 0]).any():
            raise AMNetError(f"video {vid!r}: a segment ends before it starts")
        results[str(vid)] = [
            {"label": class_names[c], "label_id": c, "score": score, "segment": [s, e]}
            for c, score, (s, e) in zip(
                labels, det.scores.tolist(), det.segments.tolist(), strict=True
            )
        ]
    return {"version": version, "results": results, "external_data": {}}


def write_results(
    path: str | os.PathLike,
    per_video: Mapping[str, Detections],
    class_names: Sequence[str],
    version: str = "amnet",
) -> None:
    """Write a results file atomically (a reader never sees a half-written file)."""
    atomic_write_json(path, results_to_json(per_video, class_names, version))


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _other_format_hint(path: str | os.PathLike) -> str | None:
    """A pointer to the right format when a file is another ``amnet-infer`` output format."""
    if not os.path.isfile(path):  # a FIFO or device would block or never end
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline(4096).strip()
    except (OSError, UnicodeDecodeError):
        return None
    fmt = None
    if first.startswith("video_id,"):
        fmt = "csv"
    elif first.startswith("{"):
        try:
            line = json.loads(first)
        except ValueError:
            line = None
        if isinstance(line, dict) and "video_id" in line and "detections" in line:
            fmt = "jsonl"
    if fmt is None:
        return None
    return (
        f"this is amnet-infer --format {fmt} output; evaluation reads the ActivityNet results "
        "JSON (amnet-infer --format activitynet, the default)"
    )


def read_results(
    path: str | os.PathLike,
    class_names: Sequence[str],
    agnostic: bool = False,
    one_class: bool = False,
) -> dict[str, Detections]:
    """Read and validate a results file; returns detections per video in file order.

    ``label`` must be one of ``class_names``; ``label_id`` is optional, but when present it
    must name the same class. With ``agnostic`` every detection is read as class 0, whatever
    its label (the detections of a class-agnostic localizer, or a class-agnostic evaluation);
    ``one_class`` then also requires that they all carry one label (a localizer's results,
    whose classes come from a classifier: several labels would be silently dropped).
    Any problem is an AMNetError naming the file, the video and the entry.
    """
    try:
        data = read_json(path, "results file")
    except AMNetError as exc:
        hint = _other_format_hint(path)
        raise AMNetError(f"{path}: {hint}" if hint else str(exc)) from None
    if not isinstance(data, Mapping) or "results" not in data:
        hint = _other_format_hint(path)
        why = hint or "not a results file (no 'results' object)"
        raise AMNetError(f"{path}: {why}")
    results = data["results"]
    if not isinstance(results, Mapping):
        raise AMNetError(f"{path}: 'results' must be an object of video id -> list of detections")
    class_index: dict[str, int] = {}
    for i, name in enumerate(class_names):
        class_index.setdefault(name, i)

    out: dict[str, Detections] = {}
    first_label: str | None = None
    for vid, entries in results.items():
        check_video_id(vid, path)
        if not isinstance(entries, list):
            raise AMNetError(f"{path}: video {vid!r}: detections must be a list")
        n = len(entries)
        segs = np.empty((n, 2))
        scores = np.empty(n)
        labels = np.empty(n, dtype=np.int64)
        for i, entry in enumerate(entries):
            where = f"{path}: video {vid!r} detection {i}"
            if not isinstance(entry, Mapping):
                raise AMNetError(f"{where} is not an object")
            label = entry.get("label")
            if not isinstance(label, str):
                raise AMNetError(f"{where} has no 'label' string")
            if one_class and label != (first_label := first_label or label):
                raise AMNetError(
                    f"{where}: label {label!r} besides {first_label!r}: class scores go with the "
                    "results of a class-agnostic model (one label), these hold several classes"
                )
            c = 0 if agnostic else class_index.get(label)
            if c is None:
                raise AMNetError(
                    f"{where}: label {label!r} is not one of the {len(class_names)} classes of "
                    "the annotation file"
                )
            if "label_id" in entry and not agnostic:
                label_id = entry["label_id"]
                if isinstance(label_id, bool) or not isinstance(label_id, int):
                    raise AMNetError(f"{where}: 'label_id' must be an integer, found {label_id!r}")
                if not 0 <= label_id < len(class_names) or class_names[label_id] != label:
                    raise AMNetError(
                        f"{where}: label_id {label_id} does not match label {label!r} "
                        f"(expected {c})"
                    )
                c = label_id
            score = entry.get("score")
            if not _finite(score):
                raise AMNetError(f"{where}: 'score' must be a finite number, found {score!r}")
            seg = entry.get("segment")
            if not isinstance(seg, (list, tuple)) or len(seg) != 2 or not all(map(_finite, seg)):
                raise AMNetError(
                    f"{where}: 'segment' must be two finite numbers [start, end], found {seg!r}"
                )
            if seg[1] < seg[0]:
                raise AMNetError(f"{where}: negative-length segment [{seg[0]}, {seg[1]}]")
            segs[i] = seg
            scores[i] = score
            labels[i] = c
        out[str(vid)] = Detections(segs, scores, labels)
    return out
