"""Post-processing shared by every backend: model outputs -> detections in seconds.

Every backend (PyTorch, ONNX Runtime, OpenVINO, TensorRT) hands its raw per-chunk outputs
(``scores [P, K]`` sigmoid probabilities and ``segments [P, 2]`` decoded boundaries in snippet
units relative to the chunk start) to :func:`postprocess_chunks`, so that all produce the same
detections from the same numbers. Everything here is numpy only.

Pipeline (see DESIGN §6.3 and §6.5):

1. :func:`select_candidates` - per chunk, keep scores above ``score_thresh`` and the top
   ``pre_nms_topk`` (point, class) pairs.
2. shift by the chunk offset, convert to seconds, clip to the time the chunk saw and to the
   video, drop detections shorter than ``min_duration``.
3. (soft-)NMS over all chunks, merged chunk by chunk (:mod:`amnet.chunk_merge`, as a stream
   merges them), so an action seen by two overlapping chunks becomes one detection; then score
   voting and the ``max_detections`` cut. :func:`nms` is the NMS of one set of candidates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from amnet.detections import Detections
from amnet.errors import AMNetError

logger = logging.getLogger(__name__)

__all__ = [
    "NMS_METHODS",
    "VOTING_WEIGHTS",
    "PostprocessConfig",
    "RawChunk",
    "chunk_batches",
    "config_from_test_cfg",
    "nms",
    "plan_chunks",
    "postprocess_chunks",
    "run_chunked",
    "select_candidates",
]

NMS_METHODS = ("soft", "hard", "none")
# One window's raw model outputs: (scores [P, K], segments [P, 2] in snippets from the window's
# start, the window's offset in the video, its valid length).
RawChunk = tuple[np.ndarray, np.ndarray, int, int]
VOTING_WEIGHTS = ("score", "score_tiou")

# Guards the IoU division for zero-length segments (their IoU with anything is then 0).
_EPS = 1e-12


@dataclass
class PostprocessConfig:
    """Settings of the post-processing path (defaults: THUMOS14, DESIGN.md §4.8).

    Attributes:
        score_thresh: candidates must score strictly above this (>= 0, so the exactly-zero
            scores of padded points never become candidates).
        pre_nms_topk: at most this many (point, class) candidates per chunk.
        nms_method: ``"soft"`` (Gaussian soft-NMS), ``"hard"`` or ``"none"``.
        iou_threshold: hard NMS drops detections whose tIoU with a kept one exceeds this.
        sigma: Gaussian soft-NMS decays a score by ``exp(-iou**2 / sigma)``.
        min_score: soft-NMS drops detections whose decayed score falls below this.
        max_detections: at most this many detections per video.
        voting_thresh: score voting averages candidates with tIoU >= this; 0 disables voting.
        voting_weight: how voting weighs a neighbour: ``"score"`` or ``"score_tiou"`` (its
            score times its tIoU with the kept segment).
        multiclass: NMS only among detections of the same class (False: across all classes).
        min_duration: detections shorter than this many seconds (after clipping) are dropped.
    """

    score_thresh: float = 0.001
    pre_nms_topk: int = 2000
    nms_method: str = "soft"
    iou_threshold: float = 0.1
    sigma: float = 0.5
    min_score: float = 0.001
    max_detections: int = 200
    voting_thresh: float = 0.7
    voting_weight: str = "score"
    multiclass: bool = True
    min_duration: float = 0.05

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`AMNetError` naming the first invalid setting."""
        for name in ("pre_nms_topk", "max_detections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise AMNetError(f"postprocess.{name} must be an integer >= 1, got {value!r}")
        for name in (
            "score_thresh",
            "iou_threshold",
            "sigma",
            "min_score",
            "voting_thresh",
            "min_duration",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float, np.floating, np.integer))
                or not math.isfinite(value)
            ):
                raise AMNetError(f"postprocess.{name} must be a finite number, got {value!r}")
        if self.nms_method not in NMS_METHODS:
            raise AMNetError(
                f"postprocess.nms_method must be one of {', '.join(NMS_METHODS)}, "
                f"got {self.nms_method!r}"
            )
        if self.voting_weight not in VOTING_WEIGHTS:
            raise AMNetError(
                f"postprocess.voting_weight must be one of {', '.join(VOTING_WEIGHTS)}, "
                f"got {self.voting_weight!r}"
            )
        if not isinstance(self.multiclass, bool):
            raise AMNetError(
                f"postprocess.multiclass must be true or false, got {self.multiclass!r}"
            )
        # Scores are probabilities: a cut above 1 would silently keep nothing.
        if not 0 <= self.score_thresh <= 1:
            raise AMNetError(f"postprocess.score_thresh must be in [0, 1], got {self.score_thresh}")
        if self.sigma <= 0:
            raise AMNetError(f"postprocess.sigma must be > 0, got {self.sigma}")
        if not 0 <= self.iou_threshold <= 1:
            raise AMNetError(
                f"postprocess.iou_threshold must be in [0, 1], got {self.iou_threshold}"
            )
        if not 0 <= self.voting_thresh <= 1:
            raise AMNetError(
                f"postprocess.voting_thresh must be in [0, 1], got {self.voting_thresh}"
            )
        if not 0 <= self.min_score <= 1:
            raise AMNetError(f"postprocess.min_score must be in [0, 1], got {self.min_score}")
        if self.min_duration < 0:
            raise AMNetError(f"postprocess.min_duration must be >= 0, got {self.min_duration}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> PostprocessConfig:
        """Build a config from a mapping (e.g. a YAML section); missing keys take defaults.

        Raises:
            AMNetError: on keys that are not settings (all of them named) or invalid values.
        """
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise AMNetError(f"postprocess settings must be a mapping, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise AMNetError(
                f"unknown postprocess setting(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**dict(values))


# Keys of a config's test_cfg that belong to chunking and evaluation, not to post-processing.
_NOT_POSTPROCESS = ("chunk_overlap", "tiou_thresholds")


def config_from_test_cfg(test_cfg: Mapping[str, Any]) -> PostprocessConfig:
    """The post-processing settings of a model config's ``test_cfg`` section (which also holds
    the chunk overlap and the evaluation thresholds)."""
    return PostprocessConfig.from_dict(
        {k: v for k, v in test_cfg.items() if k not in _NOT_POSTPROCESS}
    )


def plan_chunks(num_snippets: int, max_len: int, overlap: float) -> list[tuple[int, int]]:
    """Split ``num_snippets`` snippets into ``[start, end)`` inference windows.

    One window when the video fits in ``max_len``; otherwise windows of exactly ``max_len`` with
    ``step = max_len - round(max_len * overlap)`` (at least 1), the last one aligned to the end so
    that no window runs past the video and every snippet is covered.

    Raises:
        ValueError: on a negative length, ``max_len < 1`` or ``overlap`` outside ``[0, 1)``.
    """
    for name, value in (("num_snippets", num_snippets), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"plan_chunks: {name} must be an integer, got {value!r}")
    if num_snippets < 0:
        raise ValueError(f"plan_chunks: num_snippets must be >= 0, got {num_snippets}")
    if max_len < 1:
        raise ValueError(f"plan_chunks: max_len must be >= 1, got {max_len}")
    if not 0 <= overlap < 1:
        raise ValueError(f"plan_chunks: overlap must be in [0, 1), got {overlap}")
    total, window = int(num_snippets), int(max_len)
    if total == 0:
        return []
    if total <= window:
        return [(0, total)]
    step = max(window - round(window * overlap), 1)
    last = total - window
    starts = list(range(0, last + 1, step))
    if starts[-1] != last:
        starts.append(last)
    return [(s, s + window) for s in starts]


def chunk_batches(
    features: np.ndarray, max_len: int, overlap: float, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """The chunks of one ``[T, C]`` video as model inputs, ``batch_size`` chunks per batch.

    Yields ``(x [b, L, C] float32, lengths [b] int64, starts)``: each batch is padded to its
    longest chunk (a lone chunk is a view of ``features``, no copy). Every backend runs its
    chunks through this, so they all see the same windows and padding.
    """
    if batch_size < 1:
        raise ValueError(f"chunk_batches: batch_size must be >= 1, got {batch_size}")
    windows = plan_chunks(features.shape[0], max_len, overlap)
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        if len(group) == 1:
            start, end = group[0]
            x = features[None, start:end]
        else:
            x = np.zeros((len(group), max(e - s for s, e in group), features.shape[1]), np.float32)
            for j, (start, end) in enumerate(group):
                x[j, : end - start] = features[start:end]
        lengths = np.array([end - start for start, end in group], dtype=np.int64)
        yield x, lengths, [start for start, _ in group]


def run_chunked(
    run: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    features: np.ndarray,
    max_len: int,
    overlap: float,
    batch_size: int,
) -> list[RawChunk]:
    """The one chunk loop: raw outputs ``(scores [P, K], segments [P, 2], offset, length)`` per
    chunk of a ``[T, C]`` video, ``run(x [b, L, C], lengths [b])`` called once per batch.

    Every backend (and the PyTorch evaluation during training) goes through here, so they see
    the same windows, batches and padding. Outputs stay at the padded length: padded points
    score exactly 0, so post-processing never picks them.
    """
    from amnet.fileio import release_rows

    outputs: list[RawChunk] = []
    step = max(max_len - round(max_len * overlap), 1)
    for x, lengths, starts in chunk_batches(features, max_len, overlap, batch_size):
        scores, segments = run(x, lengths)
        scores = np.asarray(scores, dtype=np.float32)
        segments = np.asarray(segments, dtype=np.float32)
        outputs.extend(
            (scores[j], segments[j], start, int(lengths[j])) for j, start in enumerate(starts)
        )
        # Later windows start at or after this one plus a step: the rows before are done (a
        # memory-mapped video then keeps only about one window resident).
        release_rows(features, starts[-1] + step)
    return outputs


def select_candidates(
    scores: np.ndarray, segments: np.ndarray, cfg: PostprocessConfig | None = None
) -> Detections:
    """Pick the (point, class) candidates of one chunk.

    Keeps entries scoring strictly above ``cfg.score_thresh`` and of those the top
    ``cfg.pre_nms_topk`` over the flattened ``P x K`` scores. Ties are resolved by flattened index
    (point-major), so the selection is deterministic.

    Args:
        scores: ``[P, K]`` class probabilities.
        segments: ``[P, 2]`` decoded segments (any unit; returned unchanged).

    Returns:
        Candidates sorted by score descending; ``labels`` are the class indices.
    """
    cfg = cfg or PostprocessConfig()
    scores = np.asarray(scores)
    segments = np.asarray(segments, dtype=np.float64)
    if scores.ndim != 2 or segments.shape != (scores.shape[0], 2):
        raise ValueError(
            f"select_candidates: scores {scores.shape}, segments {segments.shape} "
            "(expected [P, K] and [P, 2])"
        )
    num_classes = scores.shape[1]
    flat = scores.reshape(-1)
    idx = np.flatnonzero(flat > cfg.score_thresh)  # NaN fails the test, so it is dropped too
    vals = flat[idx].astype(np.float64)
    k = cfg.pre_nms_topk
    if len(idx) > k:
        # Partition instead of a full sort: all entries above the k-th largest value, then the
        # earliest entries equal to it - the same set a stable sort would keep, at O(n) cost.
        kth = np.partition(vals, len(vals) - k)[len(vals) - k]
        above = np.flatnonzero(vals > kth)
        ties = np.flatnonzero(vals == kth)[: k - len(above)]
        keep = np.sort(np.concatenate([above, ties]))
        idx, vals = idx[keep], vals[keep]
    order = np.argsort(-vals, kind="stable")
    idx, vals = idx[order], vals[order]
    return Detections(segments[idx // num_classes], vals, idx % num_classes)


def _tiou_one_to_many(
    start: float,
    end: float,
    length: float,
    starts: np.ndarray,
    ends: np.ndarray,
    lengths: np.ndarray,
) -> np.ndarray:
    """tIoU of one segment with many (``lengths`` precomputed, clipped at 0)."""
    inter = np.minimum(ends, end)
    inter -= np.maximum(starts, start)
    np.maximum(inter, 0.0, out=inter)
    union = lengths + length
    union -= inter
    np.maximum(union, _EPS, out=union)
    inter /= union
    return inter


def _tiou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` tIoU between two segment sets."""
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
    np.maximum(inter, 0.0, out=inter)
    len_a = np.maximum(a[:, 1] - a[:, 0], 0.0)
    len_b = np.maximum(b[:, 1] - b[:, 0], 0.0)
    union = len_a[:, None] + len_b[None, :] - inter
    return inter / np.maximum(union, _EPS)


def _group_bounds(keys: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Stable order that makes equal keys contiguous, plus each position's ``[lo, hi)`` group."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    _, first, counts = np.unique(sorted_keys, return_index=True, return_counts=True)
    lo = np.repeat(first, counts)
    return order, lo.tolist(), (lo + np.repeat(counts, counts)).tolist()


# Past this many overlapping pairs per segment the pair lists cost more memory than they save
# time, and the NMS computes each pick's tIoU against its whole group instead.
_PAIRS_PER_SEGMENT = 64


def _overlap_pairs(
    starts: np.ndarray, ends: np.ndarray, lengths: np.ndarray, lo: list[int], hi: list[int]
) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """The pairs of segments of a group whose tIoU is positive, as rows: ``cols[ptr[i] :
    ptr[i + 1]]`` overlap segment i, with tIoU ``iou[ptr[i] : ptr[i + 1]]`` (computed as
    :func:`_tiou_one_to_many` does, so to the bit). None when there are too many, or the
    segments are not all finite (their tIoU is not an overlap test)."""
    n = len(starts)
    if not (np.isfinite(starts).all() and np.isfinite(ends).all()):
        return None
    groups = []
    for a in sorted(set(lo)):
        b = hi[a]
        # By start, the segments that start inside segment i (after its start) follow it.
        by_start = a + np.argsort(starts[a:b], kind="stable")
        first = np.arange(1, b - a + 1)
        count = np.maximum(np.searchsorted(starts[by_start], ends[by_start], "left") - first, 0)
        groups.append((by_start, first, count))
    if sum(int(count.sum()) for _, _, count in groups) > _PAIRS_PER_SEGMENT * n:
        return None
    rows_by_group, cols_by_group = [], []
    for by_start, first, count in groups:
        steps = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        rows_by_group.append(np.repeat(by_start, count))
        cols_by_group.append(by_start[np.repeat(first, count) + steps])
    rows = np.concatenate(rows_by_group) if rows_by_group else np.zeros(0, np.int64)
    cols = np.concatenate(cols_by_group) if cols_by_group else np.zeros(0, np.int64)
    iou = np.minimum(ends[cols], ends[rows])
    iou -= np.maximum(starts[cols], starts[rows])
    np.maximum(iou, 0.0, out=iou)
    union = lengths[cols] + lengths[rows]
    union -= iou
    np.maximum(union, _EPS, out=union)
    iou /= union
    hit = iou > 0  # segments of no length overlap nothing
    rows, cols, iou = rows[hit], cols[hit], iou[hit]
    rows, cols, iou = np.r_[rows, cols], np.r_[cols, rows], np.r_[iou, iou]  # tIoU is symmetric
    by_row = np.argsort(rows, kind="stable")
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=ptr[1:])
    return ptr.tolist(), cols[by_row], iou[by_row]


def _take_best(
    cur: np.ndarray,
    stop_below: float,
    picked: list[int],
    picked_scores: list[float],
    live_fixed: np.ndarray | None,
) -> int:
    """One greedy step: the position of the best current score, now picked (-1 when nothing is
    left at or above ``stop_below``)."""
    i = int(cur.argmax())
    top = float(cur[i])
    if top == -np.inf or top < stop_below:
        return -1
    picked.append(i)
    picked_scores.append(top)
    cur[i] = -np.inf
    if live_fixed is not None:
        live_fixed[i] = False
    return i


def _greedy_over_pairs(
    cur: np.ndarray,
    pairs: tuple[list[int], np.ndarray, np.ndarray],
    cfg: PostprocessConfig,
    floor: float,
    limit: int,
    stop_below: float,
    fixed_scores: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[list[int], list[float]]:
    """:func:`_suppress`'s loop (no ``settle``) over the lists of :func:`_overlap_pairs`: each
    pick updates only the segments it overlaps, with the same arithmetic, in the same order."""
    ptr, neighbours, iou = pairs
    soft = cfg.nms_method == "soft"
    if soft:
        iou *= iou
        iou *= -1.0 / cfg.sigma
        decay = np.exp(iou, out=iou)
    else:
        drop = iou > cfg.iou_threshold
    live_fixed: np.ndarray | None = None
    settled = cur  # read only where live_fixed is set
    if fixed_scores is not None:
        live_fixed, settled = fixed_scores
    picked: list[int] = []
    picked_scores: list[float] = []
    while len(picked) < limit:
        i = _take_best(cur, stop_below, picked, picked_scores, live_fixed)
        if i < 0:
            break
        a, b = ptr[i], ptr[i + 1]
        if a == b:
            continue
        near = neighbours[a:b]
        scores = cur[near]
        if soft:
            scores *= decay[a:b]
            scores[~(scores >= floor)] = -np.inf
        else:
            scores[drop[a:b]] = -np.inf
        if live_fixed is not None:
            keep = live_fixed[near]
            scores[keep] = settled[near][keep]
        cur[near] = scores
    return picked, picked_scores


def _suppress(
    dets: Detections,
    cfg: PostprocessConfig,
    *,
    limit: int | None = None,
    fixed: np.ndarray | None = None,
    stop_below: float = -np.inf,
    settle: np.ndarray | None = None,
    settle_limit: int | None = None,
    final_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy (soft-)NMS; returns the kept indices into ``dets`` and their final scores.

    ``limit`` caps the picks (default ``cfg.max_detections``); the loop also stops once the best
    remaining score is below ``stop_below``. ``fixed`` marks detections whose score is settled
    (picks of an earlier round, :mod:`amnet.chunk_merge`): they are picked in score order and
    suppress the others as usual, but are never suppressed themselves. With ``settle`` (a mask
    that leaves out the fixed detections: they are settled already), the loop stops as soon as
    every masked detection is picked or suppressed, or once ``settle_limit`` detections scoring
    at least the current pick are final: the masked ones picked so far, plus those of
    ``final_scores`` (ascending; detections made final before) that score at least as much.
    What follows scores lower than all of them.

    Groups (classes, or everything when not multiclass) are laid out contiguously so that each
    step computes the tIoU of the pick against its own group only, as one vectorised operation.
    Picks are taken in global descending order of the current score; since scores only ever
    decrease, that sequence is non-increasing, so the loop can stop after ``max_detections``
    picks without changing the result.
    """
    keys = dets.labels if cfg.multiclass else np.zeros(len(dets), dtype=np.int64)
    order, lo, hi = _group_bounds(keys)
    segs = dets.segments[order]
    starts = np.ascontiguousarray(segs[:, 0])
    ends = np.ascontiguousarray(segs[:, 1])
    lengths = np.maximum(ends - starts, 0.0)
    cur = dets.scores[order].copy()
    soft = cfg.nms_method == "soft"
    floor = cfg.min_score if soft else -np.inf
    cur[~(cur >= floor)] = -np.inf  # NaN and (soft) too-low scores are never picked
    if soft:
        inv_sigma = 1.0 / cfg.sigma

    live_fixed = None
    if fixed is not None and fixed.any():
        live_fixed = fixed[order].copy()  # fixed and not yet picked
        settled = cur.copy()
    limit = cfg.max_detections if limit is None else limit
    watched = None
    if settle is not None:
        watched = settle[order] & (cur > -np.inf)  # not yet picked or suppressed
        unsettled = int(watched.sum())
        if unsettled == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        settled_picks = 0

    # An NMS run to its end (a stream's) picks most candidates: it pays to list once which
    # segments overlap which, and to touch only those at each pick.
    pairs = (
        None
        if settle is not None or limit < len(cur)
        else _overlap_pairs(starts, ends, lengths, lo, hi)
    )
    if pairs is not None:
        fixed_scores = (live_fixed, settled) if live_fixed is not None else None
        kept, kept_scores = _greedy_over_pairs(
            cur, pairs, cfg, floor, limit, stop_below, fixed_scores
        )
        return order[np.asarray(kept, dtype=np.int64)], np.asarray(kept_scores)

    picked: list[int] = []
    picked_scores: list[float] = []
    while len(picked) < limit:
        i = _take_best(cur, stop_below, picked, picked_scores, live_fixed)
        if i < 0:
            break
        if watched is not None and watched[i]:
            watched[i] = False
            unsettled -= 1
            settled_picks += 1
            if unsettled == 0:
                break
            if settle_limit is not None:
                final = settled_picks
                if final_scores is not None and len(final_scores):
                    top = picked_scores[-1]
                    final += len(final_scores) - int(np.searchsorted(final_scores, top, "left"))
                if final >= settle_limit:
                    break
        a, b = lo[i], hi[i]
        if b - a == 1:
            continue
        iou = _tiou_one_to_many(
            float(starts[i]),
            float(ends[i]),
            float(lengths[i]),
            starts[a:b],
            ends[a:b],
            lengths[a:b],
        )
        group = cur[a:b]  # a view: updates land in ``cur``
        if soft:
            iou *= iou
            iou *= -inv_sigma
            group *= np.exp(iou, out=iou)
            # -inf * 0 (full underflow) gives NaN; the negated test removes it along with the rest.
            dead = ~(group >= floor)
        else:
            dead = iou > cfg.iou_threshold
        group[dead] = -np.inf
        if live_fixed is not None:
            keep = live_fixed[a:b]
            group[keep] = settled[a:b][keep]
        if watched is not None:
            # Watched detections are never fixed, and those already at -inf are not watched:
            # the newly suppressed ones are the watched ones this step killed.
            gone = watched[a:b] & dead
            count = int(np.count_nonzero(gone))
            if count:
                watched[a:b][gone] = False
                unsettled -= count
                if unsettled == 0:
                    break
    return order[np.asarray(picked, dtype=np.int64)], np.asarray(picked_scores, dtype=np.float64)


def _vote(dets: Detections, kept: np.ndarray, thresh: float, weight: str = "score") -> np.ndarray:
    """Score voting: each kept segment becomes the weighted mean of the original candidate
    segments of its class that overlap it with tIoU >= ``thresh`` (itself included). A
    neighbour weighs its score (``weight="score"``) or its score × tIoU (``"score_tiou"``)."""
    voted = dets.segments[kept].copy()
    weights_all = np.nan_to_num(np.clip(dets.scores, 0.0, None), nan=0.0)
    kept_labels = dets.labels[kept]
    for label in np.unique(kept_labels):
        all_rows = np.flatnonzero(kept_labels == label)
        cols = np.flatnonzero(dets.labels == label)
        segs, weights = dets.segments[cols], weights_all[cols][None, :]
        # Rows in blocks: a long video has ~10^5 candidates of a class, and a [kept x candidates]
        # float64 matrix per temporary would cost memory in proportion to its length.
        block = max(1, _VOTE_BLOCK_VALUES // max(len(cols), 1))
        for start in range(0, len(all_rows), block):
            rows = all_rows[start : start + block]
            iou = _tiou_matrix(voted[rows], segs)
            w = np.where(iou >= thresh, weights, 0.0)
            if weight == "score_tiou":
                w *= iou
            total = w.sum(axis=1)
            ok = total > 0  # e.g. a zero-length segment has no overlap: leave it as it is
            voted[rows[ok]] = (w[ok] @ segs) / total[ok, None]
    return voted


_VOTE_BLOCK_VALUES = 1 << 20  # entries per voting block (8 MB per float64 temporary)


def nms(dets: Detections, cfg: PostprocessConfig | None = None) -> Detections:
    """Non-maximum suppression, score voting and the per-video cut.

    - ``"soft"``: Gaussian soft-NMS - repeatedly take the highest-scoring remaining detection,
      multiply the others' scores by ``exp(-iou**2 / sigma)``, drop those below ``min_score``.
    - ``"hard"``: drop detections whose tIoU with a kept one exceeds ``iou_threshold``.
    - ``"none"``: no suppression.

    Suppression happens within a class when ``cfg.multiclass`` (else across all). Then, unless
    ``voting_thresh`` is 0, score voting replaces each kept segment by the weighted mean (see
    ``voting_weight``) of the original (pre-NMS) candidates of the same class with tIoU >=
    ``voting_thresh``. Returns at
    most ``max_detections`` detections sorted by score descending (ties keep pick order).
    """
    cfg = cfg or PostprocessConfig()
    if len(dets) == 0:
        return Detections.empty()
    if cfg.nms_method == "none":
        valid = np.flatnonzero(~np.isnan(dets.scores))
        order = valid[np.argsort(-dets.scores[valid], kind="stable")][: cfg.max_detections]
        kept, kept_scores = order, dets.scores[order]
    else:
        kept, kept_scores = _suppress(dets, cfg)
    if len(kept) == 0:
        return Detections.empty()
    segments = (
        _vote(dets, kept, cfg.voting_thresh, cfg.voting_weight)
        if cfg.voting_thresh > 0
        else dets.segments[kept]
    )
    rank = np.argsort(-kept_scores, kind="stable")[: cfg.max_detections]
    return Detections(segments[rank], kept_scores[rank], dets.labels[kept][rank])


def postprocess_chunks(
    chunks: Sequence[tuple[Any, ...]],
    duration: float,
    fps: float,
    feature_stride: float,
    num_frames: float,
    cfg: PostprocessConfig | None = None,
    min_score: float | None = None,
) -> Detections:
    """Turn the raw outputs of one video's chunks into its final detections, in seconds.

    This is the single path every backend calls; an ordinary video is one chunk at offset 0.
    Chunks go through :class:`amnet.chunk_merge.ChunkMerger` in order, as a stream's do, so a
    stream of the same video gives the same detections.

    Args:
        chunks: per chunk ``(scores [P, K], segments [P, 2], offset[, length])`` with segments in
            snippet units relative to the chunk start, ``offset`` the chunk's first snippet and
            ``length`` its snippet count (without it, segments are not clipped to the chunk's
            end), in increasing ``offset``.
        duration: video length in seconds; detections are clipped to ``[0, duration]``.
        fps, feature_stride, num_frames: the feature convention (see :func:`snippets_to_seconds`).
        min_score: report only detections scoring at least this (cheaper than filtering after).

    Returns:
        At most ``cfg.max_detections`` detections sorted by score descending, after one NMS over
        all chunks together (so an action seen by two overlapping chunks yields one detection).
    """
    from amnet.chunk_merge import ChunkMerger

    cfg = cfg or PostprocessConfig()
    if not (math.isfinite(duration) and duration >= 0):
        raise ValueError(f"postprocess_chunks: duration must be finite and >= 0, got {duration}")
    merger = ChunkMerger(
        cfg,
        fps,
        feature_stride,
        num_frames,
        duration=duration,
        keep_top=cfg.max_detections,
        min_score=min_score,
    )
    parts: list[Detections] = []
    last = -math.inf
    for chunk in chunks:
        scores, segments, offset = chunk[:3]
        if offset < last:
            raise ValueError("postprocess_chunks: chunks must come in increasing offset order")
        last = offset
        parts.append(merger.add(scores, segments, int(offset), *chunk[3:4]))
    parts.append(merger.finish())
    merged = Detections.concatenate(parts)
    result = merged.take(np.argsort(-merged.scores, kind="stable")[: cfg.max_detections])
    logger.debug("postprocess: %d chunk(s) -> %d detections", len(chunks), len(result))
    return result
