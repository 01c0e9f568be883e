"""Chunk by chunk: the post-processing of a long video as a sequence of windows (DESIGN §6.5).

A video longer than the model's window runs in overlapping chunks. :class:`ChunkMerger` turns
their candidates into detections one chunk at a time, and says which detections are *final*:
they cannot change whatever later chunks bring. The whole-video path
(:func:`amnet.postprocess.postprocess_chunks`) and the stream
(:class:`amnet.deploy.stream.StreamingDetector`) both run it, over the same chunks in the same
order, so they agree however the stream was cut into blocks.

Three rules make finality decidable with memory bounded by the window:

1. Reach. A chunk only claims time it saw: its segments are clipped to the span its snippets
   cover, ``[offset * stride / fps, ((offset + length - 1) * stride + frames) / fps]``. For a
   video of one chunk this is the ``[0, duration]`` clip of old. Later chunks start at or after
   the *frontier* (the first frame of the next chunk), so their candidates can only overlap
   candidates that end after it.
2. Natural finality (exact). Greedy (soft-)NMS picks in descending score and scores only fall,
   so the picks scoring ``>= v`` depend only on candidates scoring ``>= v`` that chain to them
   by overlap. A pick ``X`` of score ``v`` is final once every candidate of its class chained to
   it through candidates scoring ``>= v`` ends before the frontier: nothing later can join the
   chain. Score voting reads the original candidates that overlap ``X``; all of them are in by
   then.
3. Retirement (bounded). When chunk ``k`` arrives, candidates ending before its first frame are
   settled with the NMS of the pool as it stands: picks become *anchors* (fixed score; they still
   suppress the rest), the others are dropped. This bounds the delay and the pool even where
   low scores chain over the whole video; the whole-video path does the same, so both stay
   identical.
"""

from __future__ import annotations

import math

import numpy as np

from amnet.detections import Detections
from amnet.postprocess import PostprocessConfig, _suppress, _vote, select_candidates
from amnet.timebase import snippets_duration, snippets_to_seconds

__all__ = ["ChunkMerger"]

_ACTIVE, _ANCHOR, _DEAD = 0, 1, 2


class ChunkMerger:
    """Candidates of a video's chunks in, final detections out (segments in seconds).

    Args:
        cfg: post-processing settings (``max_detections`` is applied only with ``keep_top``).
        fps, feature_stride, num_frames: the feature convention.
        duration: the video's length in seconds when known (whole videos); segments are also
            clipped to ``[0, duration]``. ``None`` for a stream.
        keep_top: keep only what can still make the best ``keep_top`` detections (whole videos
            with a cap); ``None`` keeps every detection (streams).
        min_score: the caller drops detections scoring below this: candidates that start below
            it are left out of the NMS (they could only suppress detections scoring less than
            themselves), which changes nothing above it and saves most of the work.
    """

    def __init__(
        self,
        cfg: PostprocessConfig,
        fps: float,
        feature_stride: float,
        num_frames: float,
        duration: float | None = None,
        keep_top: int | None = None,
        min_score: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.min_score = -math.inf if min_score is None else float(min_score)
        # Floats: a resampled video's stride is fractional (amnet.timebase.resampled_timebase).
        self.fps, self.stride, self.frames = float(fps), float(feature_stride), float(num_frames)
        self.duration = duration
        self.keep_top = keep_top
        self._best: np.ndarray = np.zeros(0)  # scores emitted so far, for keep_top's bar
        self._pool = _Pool.empty()
        # The NMS of the pool as it stands (its bar, picks, pick scores, and each pick's chain
        # reach once ready() needed it, NaN before): what ready() reads until the next chunk
        # changes the pool.
        self._picks: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- time -------------------------------------------------------------------------------

    def first_frame(self, snippet: float) -> float:
        """Seconds at the first frame of ``snippet`` (where a chunk starting there begins)."""
        return snippet * self.stride / self.fps

    @property
    def pool_size(self) -> int:
        return len(self._pool)

    def _bar(self) -> float:
        """Scores below this cannot be reported (``min_score``, or the best ``keep_top``)."""
        if self.keep_top is None or len(self._best) < self.keep_top:
            return self.min_score
        return max(self.min_score, float(self._best[-self.keep_top]))

    # -- steps ------------------------------------------------------------------------------

    def add(
        self, scores: np.ndarray, segments: np.ndarray, offset: int, length: int | None = None
    ) -> Detections:
        """Add one chunk's raw outputs (``scores [P, K]``, ``segments [P, 2]`` in snippets from
        the chunk start) and retire what ends before it; returns the detections made final."""
        self._picks = None  # the pool changes
        cand = select_candidates(scores, segments, self.cfg)
        segs = snippets_to_seconds(
            cand.segments + float(offset), self.fps, self.stride, self.frames
        )
        low = self.first_frame(offset)
        high = math.inf
        if length is not None:
            high = snippets_duration(offset + length, self.fps, self.stride, self.frames)
        if self.duration is not None:
            low, high = max(low, 0.0), min(high, self.duration)
        np.clip(segs, low, high, out=segs)
        keep = (segs[:, 1] - segs[:, 0]) >= self.cfg.min_duration
        # Candidates that can no longer make the cut still vote, so they stay, as dead ones.
        dead = cand.scores[keep] < self._bar()
        self._pool.append(segs[keep], cand.scores[keep], cand.labels[keep], dead)
        return self._retire(low)

    def _retire(self, cut: float) -> Detections:
        pool = self._pool
        old = (pool.kind == _ACTIVE) & (pool.ends <= cut)
        if not old.any():
            self._prune(cut)
            return Detections.empty()
        bar = self._bar()
        if self.keep_top is None:
            # Uncapped (a stream): the whole NMS of the pool. Its picks among the old candidates
            # are those of an NMS stopped once they are decided, and it is also the NMS of the
            # pool after this step, which ready() reads: an old pick becomes an anchor fixed at
            # the score it is picked at, the other old candidates were never picked (they
            # suppress nothing), and pruned anchors overlap no active candidate.
            every, every_scores = self._greedy(bar)
            settled = old[every]
            picks, pick_scores = every[settled], every_scores[settled]
        else:
            # With a cap, once ``keep_top`` detections scoring at least the current pick are
            # final (old candidates picked here, with these scores, and detections emitted
            # before) every later pick scores lower and cannot be reported, nor change what is:
            # it could only suppress candidates scoring less than itself.
            picks, pick_scores = self._greedy(
                bar, settle=old, settle_limit=self.keep_top, final_scores=self._best
            )
            settled = old[picks]
            picks, pick_scores = picks[settled], pick_scores[settled]
        fresh = ~pool.emitted[picks]  # some were final (and emitted) before
        out = self._emit(picks[fresh], pick_scores[fresh])
        pool.kind[old] = _DEAD
        pool.kind[picks] = _ANCHOR
        pool.frozen[picks] = pick_scores
        kept = self._prune(cut)
        if self.keep_top is None:
            index = np.cumsum(kept) - 1  # pool positions after the prune
            on = kept[every]
            self._picks = (bar, index[every[on]], every_scores[on], np.full(on.sum(), np.nan))
        return out

    def ready(self, frontier: float) -> Detections:
        """Detections that are final now that no later chunk can start before snippet
        ``frontier`` (exact: they are what the rest of the video would give them)."""
        pool = self._pool
        limit = self.first_frame(frontier)
        waiting = (pool.kind == _ACTIVE) & ~pool.emitted & (pool.ends <= limit)
        if not waiting.any():
            return Detections.empty()
        # Any NMS that runs until the waiting candidates are decided picks them as the whole
        # NMS of the pool does (it is the same sequence, cut short), and the pool only changes
        # with the next chunk: one NMS serves every call until then.
        bar = self._bar()
        if self._picks is None or self._picks[0] != bar:
            picks, pick_scores = self._greedy(bar)
            self._picks = (bar, picks, pick_scores, np.full(len(picks), np.nan))
        _, picks, pick_scores, reach = self._picks
        due = np.flatnonzero(
            (pool.kind[picks] == _ACTIVE) & ~pool.emitted[picks] & (pool.ends[picks] <= limit)
        )
        if len(due) == 0:
            return Detections.empty()
        # A chain's reach depends on the pool only, not on the frontier: each is found once.
        todo = due[np.isnan(reach[due])]
        if len(todo):
            reach[todo] = self._chain_reach(picks[todo], pick_scores[todo])
        final = due[reach[due] <= limit]
        return self._emit(picks[final], pick_scores[final])

    def finish(self) -> Detections:
        """The end of the video: every remaining pick."""
        picks, pick_scores = self._greedy(self._bar(), limit=self.keep_top)
        todo = (self._pool.kind[picks] == _ACTIVE) & ~self._pool.emitted[picks]
        out = self._emit(picks[todo], pick_scores[todo])
        self._pool, self._picks = _Pool.empty(), None
        return out

    # -- internals --------------------------------------------------------------------------

    def _greedy(
        self,
        stop_below: float,
        limit: int | None = None,
        settle: np.ndarray | None = None,
        settle_limit: int | None = None,
        final_scores: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Soft-)NMS over the live pool (active candidates and anchors): pool indices of the
        picks, in pick order, and their scores; with ``settle`` (a pool mask), only until those
        are all picked or suppressed, or ``settle_limit`` final detections (see
        :func:`amnet.postprocess._suppress`) score at least the current pick."""
        pool = self._pool
        live = np.flatnonzero(pool.kind != _DEAD)
        if len(live) == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        anchor = pool.kind[live] == _ANCHOR
        scores = np.where(anchor, pool.frozen[live], pool.scores[live])
        dets = Detections(pool.segments[live], scores, pool.labels[live])
        if self.cfg.nms_method == "none":
            order = np.argsort(-scores, kind="stable")
            order = order[scores[order] >= stop_below][:limit]
            return live[order], scores[order]
        kept, kept_scores = _suppress(
            dets,
            self.cfg,
            limit=len(live) if limit is None else limit,
            fixed=anchor,
            stop_below=stop_below,
            settle=None if settle is None else settle[live],
            settle_limit=settle_limit,
            final_scores=final_scores,
        )
        return live[kept], kept_scores

    def _chain_reach(self, picks: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Per pick, the latest end of the candidates chained to it by overlap through
        candidates scoring ``>= score`` (its class, or all with ``multiclass`` off): the pick is
        final once no later chunk can start before that."""
        pool = self._pool
        live = np.flatnonzero(pool.kind != _DEAD)
        by_start = live[np.argsort(pool.segments[live, 0], kind="stable")]  # once for all picks
        current = np.where(pool.kind == _ANCHOR, pool.frozen, pool.scores)[by_start]
        starts, ends = pool.segments[by_start, 0], pool.segments[by_start, 1]
        labels = pool.labels[by_start]
        reach_of = np.empty(len(picks))
        for n, (index, score) in enumerate(zip(picks.tolist(), scores.tolist(), strict=True)):
            member = current >= score
            if self.cfg.multiclass:
                member &= labels == pool.labels[index]
            rows = np.flatnonzero(member)
            # Intervals sorted by start: a new cluster begins where a start reaches the running
            # end.
            reach = np.maximum.accumulate(ends[rows])
            breaks = np.flatnonzero(starts[rows[1:]] >= reach[:-1]) + 1
            bounds = np.concatenate([[0], breaks, [len(rows)]])
            pos = int(np.flatnonzero(by_start[rows] == index)[0])
            c = int(np.searchsorted(bounds, pos, side="right")) - 1
            reach_of[n] = reach[bounds[c + 1] - 1]
        return reach_of

    def _emit(self, picks: np.ndarray, pick_scores: np.ndarray) -> Detections:
        if len(picks) == 0:
            return Detections.empty()
        pool = self._pool
        pool.emitted[picks] = True
        everything = Detections(pool.segments, pool.scores, pool.labels)
        segments = (
            _vote(everything, picks, self.cfg.voting_thresh, self.cfg.voting_weight)
            if self.cfg.voting_thresh > 0
            else pool.segments[picks]
        )
        if self.keep_top is not None:
            self._best = np.sort(np.concatenate([self._best, pick_scores]))[-self.keep_top :]
        return Detections(segments, pick_scores, pool.labels[picks])

    def _prune(self, cut: float) -> np.ndarray:
        """Forget settled candidates that end before every active one and before ``cut`` (no
        later chunk starts before it): nothing they could suppress or vote for is left. Returns
        the mask of the candidates kept."""
        pool = self._pool
        active = pool.kind == _ACTIVE
        first = min(pool.segments[active, 0].min(), cut) if active.any() else cut
        kept = active | (pool.ends > first)
        pool.keep(kept)
        return kept


class _Pool:
    """The merger's candidates as parallel arrays (insertion order kept: ties break by it)."""

    def __init__(self, segments: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
        n = len(scores)
        self.segments, self.scores, self.labels = segments, scores, labels
        self.kind = np.full(n, _ACTIVE, dtype=np.int8)
        self.frozen = np.full(n, np.nan)
        self.emitted = np.zeros(n, dtype=bool)

    @classmethod
    def empty(cls) -> _Pool:
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def ends(self) -> np.ndarray:
        return self.segments[:, 1]

    def append(
        self, segments: np.ndarray, scores: np.ndarray, labels: np.ndarray, dead: np.ndarray
    ) -> None:
        new = _Pool(segments, scores, labels)
        new.kind[dead] = _DEAD
        for name in ("segments", "scores", "labels", "kind", "frozen", "emitted"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(new, name)]))

    def keep(self, mask: np.ndarray) -> None:
        for name in ("segments", "scores", "labels", "kind", "frozen", "emitted"):
            setattr(self, name, getattr(self, name)[mask])
