"""Per-class score thresholds: the operating points a deployment acts on.

ActivityNet mAP ranks detections; a pipeline that acts on them needs a cut per class.
:func:`amnet.metrics.operating_points` chooses them on a labelled set (``amnet-eval ...
--operating-points OUT.json``); this module writes and reads that file and applies it
(``amnet-infer --class-thresholds OUT.json``). Numpy only.

The file (JSON)::

    {"format": "amnet-operating-points", "version": 1, "tiou": 0.5,
     "target": {"precision": 0.9} | {"f1": "max"},
     "classes": {name: {"threshold": t | null, "precision": p, "recall": r,
                        "detections": n, "events": m}}}

A class whose threshold is null reached no target on that set: its detections are dropped.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from amnet.detections import Detections, per_class_array, require_detections
from amnet.errors import AMNetError
from amnet.fileio import atomic_write_json, read_json

if TYPE_CHECKING:  # the runtime reads and applies thresholds without the metric's module
    from amnet.metrics import OperatingPoint

__all__ = ["apply_class_thresholds", "read_class_thresholds", "write_operating_points"]

FORMAT = "amnet-operating-points"
VERSION = 1


def write_operating_points(
    path: str | os.PathLike,
    points: Mapping[str, OperatingPoint],
    tiou: float,
    target_precision: float | None,
) -> None:
    """Write the operating points of :func:`amnet.metrics.operating_points` (atomically)."""
    target = {"f1": "max"} if target_precision is None else {"precision": float(target_precision)}
    atomic_write_json(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "tiou": float(tiou),
            "target": target,
            "classes": {name: point.to_json() for name, point in points.items()},
        },
        indent=1,  # read by people choosing the cut, too
    )


def read_class_thresholds(path: str | os.PathLike, class_names: Sequence[str]) -> np.ndarray:
    """The thresholds of ``path`` for ``class_names``, indexed by label id (``inf`` where
    the file says null). Every class must be in the file: a class it does not name was not
    validated, and guessing a cut for it would be a silent wrong answer."""
    data = read_json(path, "operating points file")
    if (
        not isinstance(data, Mapping)
        or data.get("format") != FORMAT
        or not isinstance(data.get("classes"), Mapping)
    ):
        raise AMNetError(
            f"{path}: not an operating points file (write one with amnet-eval --operating-points)"
        )
    if data.get("version") != VERSION:
        raise AMNetError(f"{path}: version {data.get('version')!r}, this reads {VERSION}")
    classes = data["classes"]
    missing = [name for name in class_names if name not in classes]
    if missing:
        raise AMNetError(
            f"{path}: no threshold for the model's class(es) {missing[:3]} "
            f"({len(missing)} of {len(class_names)} missing)"
        )
    thresholds = np.empty(len(class_names), dtype=np.float64)
    for i, name in enumerate(class_names):
        entry = classes[name]
        value = entry.get("threshold", "missing") if isinstance(entry, Mapping) else "missing"
        if value is None:
            thresholds[i] = math.inf
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise AMNetError(f"{path}: class {name!r}: threshold must be a score in [0, 1] or null")
        else:
            thresholds[i] = float(value)
    return thresholds


def apply_class_thresholds(detections: Detections, thresholds: np.ndarray) -> Detections:
    """The detections scoring at least their class's threshold, in their order.
    ``thresholds`` is indexed by label id (:func:`read_class_thresholds`): a score in [0, 1],
    or ``inf`` for a class whose detections are all dropped."""
    require_detections(detections)
    thresholds = per_class_array(
        thresholds,
        "class thresholds must be one score in [0, 1] (or inf)",
        lambda t: (t >= 0) & ((t <= 1) | np.isposinf(t)),
    )
    if not len(detections):
        return detections
    lo, hi = int(detections.labels.min()), int(detections.labels.max())
    if lo < 0 or hi >= len(thresholds):
        raise AMNetError(
            f"detections of class ids {lo}..{hi} for {len(thresholds)} class thresholds "
            "(thresholds read for another model's classes?)"
        )
    keep = detections.scores >= thresholds[detections.labels]
    return Detections(detections.segments[keep], detections.scores[keep], detections.labels[keep])
