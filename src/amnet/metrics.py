"""The ActivityNet temporal-detection metric (mean average precision over tIoU thresholds).

Protocol (DESIGN §3), per class:

1. Ground truth is cleaned first: events shorter than ``GT_TOLERANCE`` seconds are dropped, and
   an event whose start and end both lie closer than ``GT_TOLERANCE`` to those of an earlier kept
   event of the same video and class (file order) is dropped as a duplicate.
2. The class's predictions over all videos are sorted by score, descending, with a stable sort.
3. In that order each prediction is matched to the not-yet-matched ground-truth event of the
   same video and class with the highest tIoU, provided that tIoU >= the threshold (a matched
   best event makes it try the next-best one, as the ActivityNet reference code does). A match
   is a true positive, anything else (including a prediction for a video absent from the ground
   truth) a false positive. Equal tIoUs go to the earlier ground-truth event.
4. AP is the VOC all-point interpolated area under the precision envelope.
5. mAP is the mean AP over the classes present in the (cleaned) ground truth; a class with no
   predictions scores 0, predictions of classes absent from the ground truth are ignored.

The implementation is vectorised: candidate (prediction, event) pairs are found with a sorted
window search, and the greedy matching runs for every threshold at once in "rounds" that each
settle many predictions (see :func:`_greedy_match`), so no Python loop touches a prediction.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from amnet.annotations import VideoAnnotation
from amnet.detections import Detections
from amnet.errors import AMNetError

log = logging.getLogger(__name__)

#: Seconds below which a ground-truth event counts as zero-length, or two events as duplicates.
GT_TOLERANCE = 1e-3

_MAX_THRESHOLDS = 1000


@dataclass
class EvaluationResult:
    """mAP per tIoU threshold, their average and per-class AP (fractions in [0, 1]).

    ``per_class_AP`` holds the classes present in the ground truth (those the mean runs over),
    each with one AP per threshold.
    """

    tiou_thresholds: list[float]
    mAP: list[float]
    average_mAP: float
    per_class_AP: dict[str, list[float]]

    def to_json(self) -> dict:
        return {
            "tiou_thresholds": [float(t) for t in self.tiou_thresholds],
            "mAP": [float(m) for m in self.mAP],
            "average_mAP": float(self.average_mAP),
            "per_class_AP": {k: [float(a) for a in v] for k, v in self.per_class_AP.items()},
        }


def parse_tiou(spec: str) -> np.ndarray:
    """tIoU thresholds from ``"start:stop:step"`` (stop inclusive) or a list ``"0.5,0.75"``.

    Range values are rounded to 10 decimals so that ``0.3:0.7:0.1`` gives exactly the floats
    0.3, 0.4, ..., 0.7 rather than ``0.30000000000000004`` and friends. Every threshold must lie
    in (0, 1].
    """
    if not isinstance(spec, str):
        raise AMNetError(f"a tIoU specification is a string such as '0.3:0.7:0.1', got {spec!r}")
    text = spec.strip()
    if not text:
        raise AMNetError("empty tIoU specification")
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
        else:
            parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise AMNetError(
            f"bad tIoU specification {spec!r}: expected start:stop:step or a comma list"
        ) from None
    if not all(math.isfinite(p) for p in parts):
        raise AMNetError(f"bad tIoU specification {spec!r}: values must be finite")
    if ":" in text:
        start, stop, step = parts
        if step <= 0:
            raise AMNetError(f"bad tIoU range {spec!r}: step must be positive")
        if stop < start:
            hint = f" (did you mean {start:g}:{step:g}:{stop:g}?)" if stop > 0 else ""
            raise AMNetError(
                f"bad tIoU range {spec!r}: it reads start:stop:step and stop < start{hint}"
            )
        # The small epsilon keeps the inclusive stop despite float drift in (stop - start) / step.
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > _MAX_THRESHOLDS:
            raise AMNetError(f"bad tIoU range {spec!r}: more than {_MAX_THRESHOLDS} thresholds")
        values = np.round(start + step * np.arange(count), 10)
    else:
        values = np.asarray(parts, dtype=np.float64)
    return _check_thresholds(values, repr(spec))


def _check_thresholds(thresholds: object, what: str = "tIoU thresholds") -> np.ndarray:
    values = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise AMNetError(f"{what}: no tIoU thresholds")
    if values.size > _MAX_THRESHOLDS:
        raise AMNetError(f"{what}: more than {_MAX_THRESHOLDS} tIoU thresholds")
    if not np.isfinite(values).all() or (values <= 0).any() or (values > 1).any():
        raise AMNetError(f"{what}: tIoU thresholds must lie in (0, 1], got {values.tolist()}")
    unique, counts = np.unique(values, return_counts=True)
    if (counts > 1).any():  # the average over thresholds would weigh it twice
        raise AMNetError(f"{what}: tIoU threshold {unique[counts > 1][0]:g} given twice")
    return values


def _tiou(ps: np.ndarray, pe: np.ndarray, gs: np.ndarray, ge: np.ndarray) -> np.ndarray:
    """Elementwise tIoU in seconds; union as (len_p + len_g - inter), like the reference code."""
    inter = np.maximum(np.minimum(pe, ge) - np.maximum(ps, gs), 0.0)
    union = (pe - ps) + (ge - gs) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    # A zero union can only come from a zero-length prediction on a zero-length event; neither
    # overlaps anything.
    return np.where(union > 0, iou, 0.0)


def _clean_ground_truth(
    ground_truth: Mapping[str, VideoAnnotation], class_names: Sequence[str]
) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray, int]:
    """Concatenate the events of every video, drop zero-length events and duplicates.

    Returns (video index by id, segments [G, 2], class ids [G], video indices [G], dropped count);
    events keep the mapping's video order and each video's file order.
    """
    class_index: dict[str, int] = {}
    for i, name in enumerate(class_names):
        class_index.setdefault(name, i)
    video_index: dict[str, int] = {}
    segs, classes, vids = [], [], []
    for vid, ann in ground_truth.items():
        v = video_index.setdefault(vid, len(video_index))
        seg = np.asarray(ann.segments, dtype=np.float64).reshape(-1, 2)
        if len(seg) != len(ann.labels):
            raise AMNetError(
                f"ground truth video {vid!r}: {len(seg)} segments but {len(ann.labels)} labels"
            )
        try:
            ids = [class_index[label] for label in ann.labels]
        except KeyError as exc:
            raise AMNetError(
                f"ground truth video {vid!r}: label {exc.args[0]!r} is not in the class list"
            ) from None
        segs.append(seg)
        classes.append(np.asarray(ids, dtype=np.int64))
        vids.append(np.full(len(seg), v, dtype=np.int64))
    if not segs:
        return video_index, np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    seg = np.concatenate(segs)
    cls = np.concatenate(classes)
    vid_arr = np.concatenate(vids)
    if not np.isfinite(seg).all():
        raise AMNetError("ground truth holds a non-finite segment bound")

    keep = (seg[:, 1] - seg[:, 0]) >= GT_TOLERANCE
    # Duplicates need a same-group neighbour (in start order) closer than the tolerance, so only
    # such events go through the exact sequential "earlier kept event" test; usually none do.
    group = cls * max(len(video_index), 1) + vid_arr
    order = np.lexsort((seg[:, 0], group))
    near = np.zeros(len(seg), dtype=bool)
    if len(seg) > 1:
        gs, st = group[order], seg[order, 0]
        close = (gs[1:] == gs[:-1]) & (st[1:] - st[:-1] < GT_TOLERANCE * 1.5)
        near[order[1:][close]] = True
        near[order[:-1][close]] = True
    near &= keep
    if near.any():
        kept: dict[int, list[tuple[float, float]]] = {}
        for i in np.flatnonzero(near).tolist():  # ascending index = file order
            s, e = seg[i]
            bucket = kept.setdefault(int(group[i]), [])
            if any(abs(s - ks) < GT_TOLERANCE and abs(e - ke) < GT_TOLERANCE for ks, ke in bucket):
                keep[i] = False
            else:
                bucket.append((s, e))
    dropped = int(len(seg) - keep.sum())
    return video_index, seg[keep], cls[keep], vid_arr[keep], dropped


def _prediction_arrays(
    predictions: Mapping[str, Detections], video_index: Mapping[str, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Concatenate the predictions in mapping order: segments, scores, classes, video indices
    (-1 for a video absent from the ground truth) and the number of such videos."""
    segs, scores, labels, vids = [], [], [], []
    unknown = 0
    for vid, det in predictions.items():
        if not isinstance(det, Detections):
            raise AMNetError(
                f"predictions of video {vid!r}: expected Detections, got {type(det).__name__}"
            )
        n = len(det)
        if n == 0:
            continue
        v = video_index.get(vid, -1)
        unknown += v < 0
        segs.append(np.asarray(det.segments, dtype=np.float64).reshape(-1, 2))
        scores.append(np.asarray(det.scores, dtype=np.float64).reshape(-1))
        labels.append(np.asarray(det.labels, dtype=np.int64).reshape(-1))
        vids.append(np.full(n, v, dtype=np.int64))
    if not segs:
        z = np.zeros(0, np.int64)
        return np.zeros((0, 2)), np.zeros(0), z, z, 0
    seg = np.concatenate(segs)
    score = np.concatenate(scores)
    label = np.concatenate(labels)
    vid_arr = np.concatenate(vids)
    if not (np.isfinite(seg).all() and np.isfinite(score).all()):
        raise AMNetError("predictions hold a non-finite score or segment bound")
    if (seg[:, 1] < seg[:, 0]).any():
        raise AMNetError("predictions hold a negative-length segment (end < start)")
    if len(label) and (label.min() < 0 or label.max() >= num_classes):
        raise AMNetError(f"predictions hold a class id outside [0, {num_classes})")
    return seg, score, label, vid_arr, unknown


def _candidate_pairs(
    p_seg: np.ndarray,
    p_group: np.ndarray,
    g_seg: np.ndarray,
    g_group: np.ndarray,
    min_threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, event, tIoU) for every same-group pair with tIoU >= ``min_threshold``.

    An event with tIoU >= t > 0 to prediction [s, e] has length <= (e - s) / t and overlaps it,
    so its start lies in [s - (e - s) / t, e). Events are sorted by (group, start) and each
    prediction's window is found by binary search on an exact integer key: group * (G + 1) +
    the rank of the start among all starts (ranks keep the comparisons exact, no float keys).
    ``p_group`` is -1 for predictions that cannot match anything.
    """
    empty = np.zeros(0, np.int64)
    num_g = len(g_seg)
    if num_g == 0 or len(p_seg) == 0:
        return empty, empty, np.zeros(0)
    order = np.lexsort((g_seg[:, 0], g_group))
    starts_sorted = np.sort(g_seg[:, 0])
    stride = num_g + 1
    g_key = g_group[order] * stride + np.searchsorted(starts_sorted, g_seg[order, 0])

    ps, pe = p_seg[:, 0], p_seg[:, 1]
    reach = (pe - ps) / min_threshold
    # Widen the window a little: it only has to be a superset, and rounding must not cut it.
    lo_val = ps - reach * (1 + 1e-9) - 1e-6
    hi_val = pe + 1e-6
    base = p_group * stride
    lo = np.searchsorted(g_key, base + np.searchsorted(starts_sorted, lo_val))
    hi = np.searchsorted(g_key, base + np.searchsorted(starts_sorted, hi_val))
    counts = np.where(p_group >= 0, hi - lo, 0)
    total = int(counts.sum())
    if total == 0:
        return empty, empty, np.zeros(0)
    pred = np.repeat(np.arange(len(p_seg)), counts)
    offsets = np.cumsum(counts) - counts
    pos = np.repeat(lo - offsets, counts) + np.arange(total)
    gt = order[pos]
    iou = _tiou(ps[pred], pe[pred], g_seg[gt, 0], g_seg[gt, 1])
    ok = iou >= min_threshold
    return pred[ok], gt[ok], iou[ok]


def _greedy_match(
    agent: np.ndarray, resource: np.ndarray, num_agents: int, num_resources: int
) -> np.ndarray:
    """Serial greedy assignment, computed in parallel rounds; returns a TP flag per agent.

    Agents (one per prediction and threshold, numbered in processing order) each hold rows
    sorted by ``agent`` and, within an agent, by preference. Sequentially, each agent takes its
    most preferred free resource. In a round, an unsettled agent whose best still-free resource
    is not wanted (anywhere in its list) by any earlier unsettled agent can take it right away:
    no earlier agent will ever take it, and its better choices are already gone for good. The
    earliest unsettled agent always qualifies, so each round makes progress; in practice a few
    rounds settle everything. Agents left without free resources are false positives.
    """
    taken = np.zeros(num_resources, dtype=bool)
    is_tp = np.zeros(num_agents, dtype=bool)
    owner = np.empty(num_resources, dtype=np.int64)
    a, r = agent, resource
    rounds = 0
    while a.size:
        alive = ~taken[r]
        if not alive.all():
            a, r = a[alive], r[alive]
            if not a.size:
                break
        rounds += 1
        top = np.empty(a.size, dtype=bool)
        top[0] = True
        np.not_equal(a[1:], a[:-1], out=top[1:])
        # The earliest agent still claiming each resource (reset first: stale owners from
        # earlier rounds may be settled agents).
        owner[r] = num_agents
        np.minimum.at(owner, r, a)
        win = top & (owner[r] == a)
        is_tp[a[win]] = True
        taken[r[win]] = True
        keep = ~is_tp[a]
        a, r = a[keep], r[keep]
    log.debug("greedy matching: %d rounds", rounds)
    return is_tp


def _average_precision(tp: np.ndarray, num_positives: int) -> np.ndarray:
    """VOC all-point AP for ``tp`` [T, N] (predictions in rank order) per threshold.

    Recall rises by 1 / num_positives at each true positive, so the area under the precision
    envelope is the sum of the envelope at the true positives divided by num_positives.
    """
    if tp.shape[1] == 0:
        return np.zeros(tp.shape[0])
    precision = np.cumsum(tp, axis=1) / np.arange(1, tp.shape[1] + 1)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    return (envelope * tp).sum(axis=1) / num_positives


@dataclass
class _Matching:
    """Steps 1-3 of the protocol: every prediction flagged true or false positive per
    threshold. Predictions are in processing order (class-major, score descending); class
    ``c``'s are ``[bounds[c], bounds[c + 1])``."""

    thresholds: np.ndarray  # [T]
    is_tp: np.ndarray  # [T, P] bool
    scores: np.ndarray  # [P]
    bounds: np.ndarray  # [K + 1]
    npos: np.ndarray  # [K] ground-truth events per class


def _match(
    ground_truth: Mapping[str, VideoAnnotation],
    predictions: Mapping[str, Detections],
    class_names: Sequence[str],
    tiou_thresholds: Sequence[float] | np.ndarray,
) -> _Matching:
    thresholds = _check_thresholds(tiou_thresholds)
    num_classes = len(class_names)
    video_index, g_seg, g_cls, g_vid, dropped = _clean_ground_truth(ground_truth, class_names)
    if dropped:
        log.info("dropped %d zero-length or duplicate ground-truth events", dropped)
    if len(g_seg) == 0:
        raise AMNetError("the ground truth holds no (non-empty) events to evaluate against")
    npos = np.bincount(g_cls, minlength=num_classes)

    p_seg, p_score, p_cls, p_vid, unknown = _prediction_arrays(
        predictions, video_index, num_classes
    )
    # A results file of another subset, or with other video ids, scores 0 without a word.
    missing = sum(vid not in predictions for vid in video_index)
    if missing == len(video_index):
        log.warning(
            "the results hold none of the %d ground-truth videos, so every AP is 0: check the "
            "subset and the video ids",
            missing,
        )
    else:
        if unknown:
            log.warning(
                "%d predicted videos are not in the ground truth; their detections count as "
                "false positives",
                unknown,
            )
        if missing:
            log.warning(
                "%d of the %d ground-truth videos are not in the results; they count as videos "
                "without detections",
                missing,
                len(video_index),
            )
    # Predictions of classes absent from the ground truth never enter any AP.
    relevant = npos[p_cls] > 0
    if not relevant.all():
        p_seg, p_score, p_cls, p_vid = (
            p_seg[relevant],
            p_score[relevant],
            p_cls[relevant],
            p_vid[relevant],
        )
    num_p, num_g, num_t = len(p_score), len(g_seg), len(thresholds)

    # Processing order: class-major, then score descending; both sorts are stable, so ties keep
    # the input order.
    rank_order = np.argsort(-p_score, kind="stable")
    # Class ids fit 16 bits in any real dataset, where numpy's stable sort is a fast radix sort.
    cls_key = p_cls.astype(np.int16) if num_classes <= np.iinfo(np.int16).max else p_cls
    rank_order = rank_order[np.argsort(cls_key[rank_order], kind="stable")]
    rank = np.empty(num_p, dtype=np.int64)
    rank[rank_order] = np.arange(num_p)

    num_videos = max(len(video_index), 1)
    g_group = g_cls * num_videos + g_vid
    p_group = np.where(p_vid >= 0, p_cls * num_videos + p_vid, -1)
    pred, gt, iou = _candidate_pairs(p_seg, p_group, g_seg, g_group, float(thresholds.min()))

    # Rows in processing order, each prediction's events by decreasing tIoU, ties to the
    # earlier event; then one agent per (threshold, prediction), one resource per
    # (threshold, event).
    row_order = np.lexsort((gt, -iou, rank[pred]))
    row_rank, row_gt, row_iou = rank[pred[row_order]], gt[row_order], iou[row_order]
    agents, resources = [], []
    for t_idx, t in enumerate(thresholds):
        ok = row_iou >= t
        agents.append(row_rank[ok] + t_idx * num_p)
        resources.append(row_gt[ok] + t_idx * num_g)
    is_tp = _greedy_match(
        np.concatenate(agents), np.concatenate(resources), num_t * num_p, num_t * num_g
    ).reshape(num_t, num_p)

    bounds = np.searchsorted(p_cls[rank_order], np.arange(num_classes + 1))
    return _Matching(thresholds, is_tp, p_score[rank_order], bounds, npos)


def evaluate_detection(
    ground_truth: Mapping[str, VideoAnnotation],
    predictions: Mapping[str, Detections],
    class_names: Sequence[str],
    tiou_thresholds: Sequence[float] | np.ndarray,
) -> EvaluationResult:
    """ActivityNet detection mAP of ``predictions`` (class ids index ``class_names``).

    Ground-truth labels are class names and must all be in ``class_names``. Predictions of
    equal score keep their input order (the sort is stable): videos in the order of the
    ``predictions`` mapping, detections in their order within a video. The full protocol is in
    the module docstring. Raises AMNetError on non-finite or negative-length predictions,
    class ids out of range, bad thresholds, or ground truth without any event.
    """
    m = _match(ground_truth, predictions, class_names, tiou_thresholds)
    present = np.flatnonzero(m.npos)
    per_class: dict[str, list[float]] = {}
    ap = np.zeros((len(present), len(m.thresholds)))
    for i, c in enumerate(present.tolist()):
        ap[i] = _average_precision(m.is_tp[:, m.bounds[c] : m.bounds[c + 1]], int(m.npos[c]))
        per_class[class_names[c]] = ap[i].tolist()
    m_ap = ap.mean(axis=0)
    return EvaluationResult(
        tiou_thresholds=m.thresholds.tolist(),
        mAP=m_ap.tolist(),
        average_mAP=float(m_ap.mean()),
        per_class_AP=per_class,
    )


@dataclass(frozen=True)
class OperatingPoint:
    """One class's score threshold and what it gives on the evaluated set: detections scoring
    at least ``threshold`` are kept (None: no threshold reaches the target; keep none)."""

    threshold: float | None
    precision: float
    recall: float
    detections: int  # kept at the threshold
    events: int  # ground-truth events of the class

    def to_json(self) -> dict:
        return {
            "threshold": self.threshold,
            "precision": self.precision,
            "recall": self.recall,
            "detections": self.detections,
            "events": self.events,
        }


def operating_points(
    ground_truth: Mapping[str, VideoAnnotation],
    predictions: Mapping[str, Detections],
    class_names: Sequence[str],
    tiou: float = 0.5,
    target_precision: float | None = None,
) -> dict[str, OperatingPoint]:
    """Per class, the score threshold to deploy with: the one with the most recall at a
    precision of at least ``target_precision`` (the highest such threshold when several give
    that recall), or with ``target_precision`` None the one of the best F1 score.

    True and false positives are those of the metric at ``tiou`` (the same matching, so a
    class's precision-recall curve is the one its AP integrates). Matching is greedy in score
    order, so the detections above a threshold are matched as they would be alone. Thresholds
    fall only between distinct scores. Every class of ``class_names`` gets a point; one without
    events, or whose detections never reach the target, gets threshold None."""
    real = (int, float, np.integer, np.floating)
    if target_precision is not None and (
        isinstance(target_precision, bool)
        or not isinstance(target_precision, real)
        or not 0.0 < target_precision <= 1.0
    ):
        raise AMNetError(f"target precision must be in (0, 1], got {target_precision!r}")
    if isinstance(tiou, bool) or not isinstance(tiou, real) or not 0.0 < tiou <= 1.0:
        raise AMNetError(f"an operating point's tIoU is one number in (0, 1], got {tiou!r}")
    m = _match(ground_truth, predictions, class_names, [tiou])
    points: dict[str, OperatingPoint] = {}
    for c, name in enumerate(class_names):
        events = int(m.npos[c])
        lo, hi = int(m.bounds[c]), int(m.bounds[c + 1])
        none = OperatingPoint(None, 0.0, 0.0, 0, events)
        if events == 0 or hi == lo:
            points[name] = none
            continue
        tp, scores = m.is_tp[0, lo:hi], m.scores[lo:hi]
        # A threshold keeps whole groups of equal scores: cut after each group's last one.
        cuts = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
        hits = np.cumsum(tp)[cuts]
        precision, recall = hits / (cuts + 1), hits / events
        if target_precision is None:
            f1 = np.where(hits > 0, 2 * precision * recall / (precision + recall + 1e-300), 0.0)
            best = int(np.argmax(f1)) if f1.max() > 0 else -1
        else:
            ok = np.flatnonzero(precision >= target_precision - 1e-12)
            # The first cut with the most recall among those that reach the target.
            best = int(ok[np.argmax(recall[ok])]) if len(ok) else -1
        if best < 0:
            points[name] = none
            continue
        k = int(cuts[best])
        points[name] = OperatingPoint(
            float(scores[k]), float(precision[best]), float(recall[best]), k + 1, events
        )
    return points


def format_table(result: EvaluationResult) -> str:
    """A small text table: mAP (%) per tIoU threshold and their average."""
    lines = ["tIoU    mAP (%)", "-----   -------"]
    for t, m in zip(result.tiou_thresholds, result.mAP, strict=True):
        lines.append(f"{t:<6.2f}  {100 * m:7.2f}")
    lines.append("-----   -------")
    lines.append(f"{'avg':<6}  {100 * result.average_mAP:7.2f}")
    return "\n".join(lines)
