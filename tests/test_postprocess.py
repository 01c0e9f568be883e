"""Tests of amnet.postprocess: hand-checked values and random-input properties (numpy RNG)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.postprocess import (
    PostprocessConfig,
    nms,
    plan_chunks,
    postprocess_chunks,
    select_candidates,
)
from amnet.timebase import snippets_to_seconds

# THUMOS14 feature convention.
FPS, STRIDE, NFRAMES = 30.0, 4, 16


def _tiou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _random_dets(
    rng: np.random.Generator, n: int, num_classes: int, n_actions: int = 8, length: float = 200.0
) -> Detections:
    """Candidates clustered around a few actions, like a detector's output."""
    centres = rng.uniform(0, length, n_actions)
    widths = rng.uniform(2, 30, n_actions)
    which = rng.integers(0, n_actions, n)
    c = centres[which] + rng.normal(0, 0.15, n) * widths[which]
    w = widths[which] * rng.uniform(0.6, 1.4, n)
    segs = np.stack([c - w / 2, c + w / 2], axis=1)
    scores = rng.uniform(0.002, 1.0, n) ** 2
    labels = rng.integers(0, num_classes, n)
    return Detections(segs, scores, labels)


def _reference_nms(dets: Detections, cfg: PostprocessConfig) -> Detections:
    """Slow, literal per-group greedy NMS + voting, to check the vectorised implementation."""
    groups = dets.labels if cfg.multiclass else np.zeros(len(dets), dtype=np.int64)
    kept: list[tuple[int, float]] = []
    for g in np.unique(groups):
        cur = {
            int(i): float(dets.scores[i])
            for i in np.flatnonzero(groups == g)
            if cfg.nms_method != "soft" or dets.scores[i] >= cfg.min_score
        }
        while cur:
            i = max(cur, key=lambda j: (cur[j], -j))
            kept.append((i, cur.pop(i)))
            if cfg.nms_method == "none":
                continue
            for j in list(cur):
                iou = _tiou(dets.segments[i], dets.segments[j])
                if cfg.nms_method == "soft":
                    cur[j] *= math.exp(-(iou**2) / cfg.sigma)
                    if cur[j] < cfg.min_score:
                        del cur[j]
                elif iou > cfg.iou_threshold:
                    del cur[j]
    kept.sort(key=lambda t: -t[1])
    kept = kept[: cfg.max_detections]
    segs, scores, labels = [], [], []
    for i, s in kept:
        seg = dets.segments[i].copy()
        if cfg.voting_thresh > 0:
            num, den = np.zeros(2), 0.0
            for j in range(len(dets)):
                if dets.labels[j] != dets.labels[i]:
                    continue
                if _tiou(dets.segments[i], dets.segments[j]) >= cfg.voting_thresh:
                    num += dets.scores[j] * dets.segments[j]
                    den += dets.scores[j]
            if den > 0:
                seg = num / den
        segs.append(seg)
        scores.append(s)
        labels.append(dets.labels[i])
    if not kept:
        return Detections.empty()
    return Detections(np.array(segs), np.array(scores), np.array(labels))


# --------------------------------------------------------------------------- formulas


def test_snippets_to_seconds_formula() -> None:
    # snippet 0: (0 * 4 + 8) / 30 = 0.2667 s; snippet 10: (40 + 8) / 30 = 1.6 s;
    # snippet 7.5: (30 + 8) / 30 = 1.2667 s
    out = snippets_to_seconds(np.array([[0.0, 10.0], [7.5, 7.5]]), FPS, STRIDE, NFRAMES)
    np.testing.assert_allclose(out, [[8 / 30, 1.6], [38 / 30, 38 / 30]])
    # other convention: fps 25, stride 8, 32 frames: snippet 2 -> (16 + 16) / 25 = 1.28 s
    assert snippets_to_seconds(np.array(2.0), 25.0, 8, 32) == pytest.approx(1.28)
    with pytest.raises(ValueError):
        snippets_to_seconds(np.zeros(2), 0.0, 4, 16)


# --------------------------------------------------------------------------- chunk planning


def test_plan_chunks_edge_cases() -> None:
    assert plan_chunks(0, 8, 0.25) == []
    assert plan_chunks(1, 8, 0.25) == [(0, 1)]
    assert plan_chunks(8, 8, 0.25) == [(0, 8)]
    # T = max_len + 1: first window [0, 8), last aligned to the end [1, 9)
    assert plan_chunks(9, 8, 0.25) == [(0, 8), (1, 9)]
    # T = 10, L = 4, overlap 0.5 -> step 2: starts 0, 2, 4, 6 (6 = T - L, already aligned)
    assert plan_chunks(10, 4, 0.5) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    # T = 11, L = 4, overlap 0.25 -> step 3: starts 0, 3, 6, then 7 aligned to the end
    assert plan_chunks(11, 4, 0.25) == [(0, 4), (3, 7), (6, 10), (7, 11)]
    # overlap 0 -> adjacent windows; overlap near 1 -> step clamps to 1
    assert plan_chunks(8, 4, 0.0) == [(0, 4), (4, 8)]
    assert plan_chunks(6, 4, 0.99) == [(0, 4), (1, 5), (2, 6)]
    # THUMOS14 default: 2304, 25 % -> step 1728
    assert plan_chunks(5000, 2304, 0.25) == [(0, 2304), (1728, 4032), (2696, 5000)]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 8, 0.25), "num_snippets"),
        ((10, 0, 0.25), "max_len"),
        ((10, 8, 1.0), "overlap"),
        ((10, 8, -0.1), "overlap"),
        ((10.0, 8, 0.25), "num_snippets"),
    ],
)
def test_plan_chunks_rejects_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_chunks(*args)


def test_plan_chunks_properties_random() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        max_len = int(rng.integers(1, 64))
        total = int(rng.integers(1, 400))
        overlap = float(rng.uniform(0, 0.95))
        wins = plan_chunks(total, max_len, overlap)
        covered = np.zeros(total, dtype=bool)
        for s, e in wins:
            assert 0 <= s < e <= total
            covered[s:e] = True
        assert covered.all()
        assert wins[0][0] == 0 and wins[-1][1] == total
        if total <= max_len:
            assert wins == [(0, total)]
            continue
        assert all(e - s == max_len for s, e in wins)
        starts = [s for s, _ in wins]
        assert starts == sorted(set(starts))
        want_overlap = min(round(max_len * overlap), max_len - 1)
        for (_, e0), (s1, _) in itertools.pairwise(wins):
            assert e0 - s1 >= want_overlap  # consecutive windows share at least the overlap
        # all but the end-aligned window advance by exactly the step
        step = max_len - want_overlap
        assert all(b - a == step for a, b in itertools.pairwise(starts[:-1]))


# --------------------------------------------------------------------------- candidates


def test_select_candidates_hand_values() -> None:
    scores = np.array(
        [
            [0.9, 0.0005, 0.2],  # point 0
            [0.001, 0.5, 0.0],  # point 1: 0.001 is not > 0.001
            [0.0, 0.0, 0.7],  # point 2
        ]
    )
    segs = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    cand = select_candidates(scores, segs, PostprocessConfig())
    # above 0.001: 0.9 (p0,c0), 0.7 (p2,c2), 0.5 (p1,c1), 0.2 (p0,c2) - sorted by score
    np.testing.assert_allclose(cand.scores, [0.9, 0.7, 0.5, 0.2])
    np.testing.assert_array_equal(cand.labels, [0, 2, 1, 2])
    np.testing.assert_allclose(cand.segments, [[0, 1], [4, 5], [2, 3], [0, 1]])
    top2 = select_candidates(scores, segs, PostprocessConfig(pre_nms_topk=2))
    np.testing.assert_allclose(top2.scores, [0.9, 0.7])


def test_select_candidates_topk_ties_are_stable() -> None:
    # eight entries of equal score: top-3 takes the first three in point-major order
    scores = np.full((4, 2), 0.5)
    scores[3, 1] = 0.6
    segs = np.arange(8, dtype=np.float64).reshape(4, 2)
    cand = select_candidates(scores, segs, PostprocessConfig(pre_nms_topk=3))
    # 0.6 at (p3, c1), then ties (p0, c0), (p0, c1)
    np.testing.assert_array_equal(cand.labels, [1, 0, 1])
    np.testing.assert_allclose(cand.segments, [[6, 7], [0, 1], [0, 1]])


def test_select_candidates_matches_full_sort_random() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        p, k = int(rng.integers(1, 300)), int(rng.integers(1, 12))
        # quantised scores -> many ties at the top-k boundary
        scores = np.round(rng.uniform(0, 1, (p, k)) ** 3, 2)
        segs = rng.uniform(0, 100, (p, 2))
        cfg = PostprocessConfig(pre_nms_topk=int(rng.integers(1, 200)))
        cand = select_candidates(scores, segs, cfg)
        flat = scores.reshape(-1)
        idx = np.flatnonzero(flat > cfg.score_thresh)
        idx = idx[np.argsort(-flat[idx], kind="stable")][: cfg.pre_nms_topk]
        np.testing.assert_array_equal(cand.scores, flat[idx])
        np.testing.assert_array_equal(cand.labels, idx % k)
        np.testing.assert_array_equal(cand.segments, segs[idx // k])


def test_select_candidates_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        select_candidates(np.zeros((4, 3)), np.zeros((5, 2)))


# --------------------------------------------------------------------------- NMS


def test_soft_nms_hand_values() -> None:
    # A = [0, 10] 0.9, B = [5, 15] 0.8: tIoU = 5 / 15 = 1/3,
    # decay = exp(-(1/9) / 0.5) = exp(-2/9) = 0.80074 -> B = 0.8 * 0.80074 = 0.64059
    # C = [0, 10] 0.01 (copy of A): decay exp(-1/0.5) = 0.13534 -> 0.00135, then against B
    # (tIoU 1/3) * 0.80074 -> 0.00108, still >= 0.001 so kept
    # D = [0, 10] 0.005 -> 0.005 * 0.13534 = 0.00068 < 0.001: dropped
    dets = Detections([[0, 10], [5, 15], [0, 10], [0, 10]], [0.9, 0.8, 0.01, 0.005], [0, 0, 0, 0])
    out = nms(dets, PostprocessConfig(voting_thresh=0))
    d = math.exp(-2 / 9)
    np.testing.assert_allclose(out.scores, [0.9, 0.8 * d, 0.01 * math.exp(-2) * d])
    np.testing.assert_allclose(out.segments, [[0, 10], [5, 15], [0, 10]])


def test_hard_nms_hand_values() -> None:
    # A [0,10] 0.9; B [9,19] 0.8 overlaps A by 1/19 = 0.053 <= 0.1 -> kept;
    # C [2,12] 0.7 overlaps A by 8/12 -> dropped; D [18,30] 0.6 overlaps B by 1/21 = 0.048 -> kept
    # E [0,10] 0.95 of class 1: other class, untouched
    dets = Detections(
        [[0, 10], [9, 19], [2, 12], [18, 30], [0, 10]],
        [0.9, 0.8, 0.7, 0.6, 0.95],
        [0, 0, 0, 0, 1],
    )
    out = nms(dets, PostprocessConfig(nms_method="hard", voting_thresh=0))
    np.testing.assert_allclose(out.scores, [0.95, 0.9, 0.8, 0.6])
    np.testing.assert_array_equal(out.labels, [1, 0, 0, 0])


def test_multiclass_false_suppresses_across_classes() -> None:
    dets = Detections([[0, 10], [0, 10], [1, 10]], [0.9, 0.8, 0.7], [0, 1, 2])
    hard = PostprocessConfig(nms_method="hard", voting_thresh=0)
    assert len(nms(dets, hard)) == 3  # per class: nothing to suppress
    out = nms(dets, PostprocessConfig(nms_method="hard", voting_thresh=0, multiclass=False))
    np.testing.assert_array_equal(out.labels, [0])
    soft = nms(dets, PostprocessConfig(voting_thresh=0, multiclass=False))
    # after A: B (class 1, tIoU 1) -> 0.8 * exp(-1/0.5) = 0.108,
    #          C (class 2, tIoU 0.9) -> 0.7 * exp(-0.81/0.5) = 0.138, so C is picked next;
    # then B decays again against C (tIoU 0.9): 0.108 * exp(-1.62) = 0.0214
    np.testing.assert_array_equal(soft.labels, [0, 2, 1])
    np.testing.assert_allclose(
        soft.scores, [0.9, 0.7 * math.exp(-1.62), 0.8 * math.exp(-2) * math.exp(-1.62)]
    )
    np.testing.assert_allclose(
        nms(dets, PostprocessConfig(voting_thresh=0)).scores, [0.9, 0.8, 0.7]
    )


def test_score_voting_hand_values() -> None:
    # A [0,10] 0.9 kept; B [1,11] 0.3 has tIoU 9/11 = 0.82 >= 0.7 with A (suppressed by hard NMS);
    # C [20,30] 0.5 does not overlap; E [2,12] 0.9 of class 1 overlaps but is another class.
    # voted A = (0.9 * [0,10] + 0.3 * [1,11]) / 1.2 = [0.25, 10.25]
    dets = Detections([[0, 10], [1, 11], [20, 30], [2, 12]], [0.9, 0.3, 0.5, 0.9], [0, 0, 0, 1])
    out = nms(dets, PostprocessConfig(nms_method="hard"))
    by_label0 = out.segments[out.labels == 0]
    np.testing.assert_allclose(by_label0, [[0.25, 10.25], [20, 30]])
    np.testing.assert_allclose(out.segments[out.labels == 1], [[2, 12]])
    # a stricter threshold excludes B (0.82 < 0.9): A stays put
    strict = nms(dets, PostprocessConfig(nms_method="hard", voting_thresh=0.9))
    np.testing.assert_allclose(strict.segments[strict.labels == 0][0], [0, 10])


def test_score_voting_moves_toward_heavier_candidates_random() -> None:
    rng = np.random.default_rng(2)
    for _ in range(100):
        base = rng.uniform(0, 100)
        shift = rng.uniform(0.1, 1.0) * rng.choice([-1, 1])
        weight = rng.uniform(0.05, 0.85)
        # anchor (kept) and a shifted, lower-scoring copy with tIoU >= 0.7 (width 20, |shift| <= 1)
        dets = Detections(
            [[base, base + 20], [base + shift, base + 20 + shift]], [0.9, weight], [0, 0]
        )
        out = nms(dets, PostprocessConfig(nms_method="hard"))
        assert len(out) == 1
        moved = out.segments[0, 0] - base
        # moves toward the neighbour, by exactly its share of the weight
        assert np.sign(moved) == np.sign(shift)
        assert moved == pytest.approx(shift * weight / (0.9 + weight))


def test_nms_none_and_empty() -> None:
    dets = Detections([[0, 10], [0, 10], [1, 9]], [0.3, 0.9, 0.5], [0, 0, 0])
    out = nms(dets, PostprocessConfig(nms_method="none", voting_thresh=0, max_detections=2))
    np.testing.assert_allclose(out.scores, [0.9, 0.5])
    assert len(nms(Detections.empty())) == 0


@pytest.mark.parametrize("method", ["soft", "hard", "none"])
@pytest.mark.parametrize("multiclass", [True, False])
def test_nms_matches_reference_random(method: str, multiclass: bool) -> None:
    rng = np.random.default_rng(3)
    for trial in range(15):
        dets = _random_dets(rng, int(rng.integers(1, 250)), int(rng.integers(1, 6)))
        cfg = PostprocessConfig(
            nms_method=method,
            multiclass=multiclass,
            max_detections=int(rng.integers(1, 80)),
            voting_thresh=float(rng.choice([0.0, 0.5, 0.7])),
            sigma=float(rng.choice([0.5, 0.2])),
            iou_threshold=float(rng.choice([0.1, 0.5])),
        )
        got, want = nms(dets, cfg), _reference_nms(dets, cfg)
        assert len(got) == len(want), trial
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-12)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.segments, want.segments, rtol=1e-9, atol=1e-9)


def test_nms_properties_random() -> None:
    rng = np.random.default_rng(4)
    for _ in range(40):
        num_classes = int(rng.integers(1, 8))
        dets = _random_dets(rng, int(rng.integers(1, 600)), num_classes)
        max_det = int(rng.integers(1, 300))
        # hard NMS: no two kept detections of one class overlap above the threshold
        cfg = PostprocessConfig(nms_method="hard", voting_thresh=0, max_detections=max_det)
        out = nms(dets, cfg)
        assert len(out) <= max_det
        for c in range(num_classes):
            segs = out.segments[out.labels == c]
            for i in range(len(segs)):
                for j in range(i + 1, len(segs)):
                    assert _tiou(segs[i], segs[j]) <= cfg.iou_threshold
        # soft NMS: scores never increase, stay >= min_score, come out sorted, cut respected
        soft_cfg = PostprocessConfig(voting_thresh=0, max_detections=max_det)
        soft = nms(dets, soft_cfg)
        assert len(soft) <= max_det
        assert np.all(np.diff(soft.scores) <= 0)
        assert np.all(soft.scores >= soft_cfg.min_score)
        original = {
            (tuple(s), int(lab)): sc
            for s, sc, lab in zip(dets.segments, dets.scores, dets.labels, strict=True)
        }
        for s, sc, lab in zip(soft.segments, soft.scores, soft.labels, strict=True):
            assert sc <= original[(tuple(s), int(lab))] + 1e-15
        # the top detection is never decayed
        assert soft.scores[0] == pytest.approx(dets.scores.max())


# --------------------------------------------------------------------------- whole path


def _padded_chunk(
    num_points: int,
    valid: int,
    num_classes: int,
    entries: list[tuple[int, int, float, float, float]],
) -> tuple[np.ndarray, np.ndarray]:
    """Scores/segments of a chunk; ``entries`` are ``(point, class, score, start, end)``. Points
    past ``valid`` carry score 0 and nonsense segments, as the model's padding does."""
    scores = np.zeros((num_points, num_classes))
    segs = np.tile([[0.0, 1.0]], (num_points, 1))
    segs[valid:] = [[-1e6, 1e6]]
    for p, c, s, a, b in entries:
        assert p < valid
        scores[p, c] = s
        segs[p] = [a, b]
    return scores, segs


def test_postprocess_single_chunk_seconds_clip_and_min_duration() -> None:
    # duration 5 s; seconds = (t * 4 + 8) / 30
    #  [-2, 10] snippets -> [0, 1.6] s                          kept
    #  [100, 200] -> [13.6, 26.9] s -> clipped to [5, 5]          dropped (0 s)
    #  [3, 3.1] -> [20/30, 20.4/30] = 0.0133 s long               dropped (< 0.05 s)
    #  [20, 30] -> [88/30, 128/30] = [2.933, 4.267] s             kept
    scores, segs = _padded_chunk(
        10,
        6,
        2,
        [(0, 0, 0.9, -2, 10), (1, 1, 0.8, 100, 200), (2, 0, 0.7, 3, 3.1), (3, 1, 0.6, 20, 30)],
    )
    out = postprocess_chunks([(scores, segs, 0)], 5.0, FPS, STRIDE, NFRAMES, PostprocessConfig())
    np.testing.assert_allclose(out.scores, [0.9, 0.6])
    np.testing.assert_array_equal(out.labels, [0, 1])
    np.testing.assert_allclose(out.segments, [[0, 1.6], [88 / 30, 128 / 30]])


def test_zero_score_padding_never_appears() -> None:
    rng = np.random.default_rng(5)
    for thresh in (0.0, 0.001):
        num_points, valid, k = 300, 180, 4
        scores = rng.uniform(0, 1, (num_points, k)) ** 4
        scores[valid:] = 0.0
        segs = np.sort(rng.uniform(0, 200, (num_points, 2)), axis=1)
        segs[valid:] = [[1000.0, 1100.0]]  # marker: would land at [133.6, 147.0] s
        cfg = PostprocessConfig(score_thresh=thresh, min_score=0.0, nms_method="none")
        cand = select_candidates(scores, segs, cfg)
        assert np.all(cand.scores > 0)
        assert not np.any(cand.segments[:, 0] == 1000.0)
        out = postprocess_chunks([(scores, segs, 0)], 200.0, FPS, STRIDE, NFRAMES, cfg)
        assert len(out) > 0 and np.all(out.scores > 0)
        assert np.all(out.segments[:, 1] < (1000 * 4 + 8) / 30)


def test_chunk_merge_one_detection_for_one_action() -> None:
    # T = 200, max_len 128, overlap 0.25 -> windows [0, 128) and [72, 200)
    windows = plan_chunks(200, 128, 0.25)
    assert windows == [(0, 128), (72, 200)]
    # one action at absolute snippets [80, 120], class 3, seen by both chunks:
    # chunk 0 sees it at [80, 120], chunk 1 (offset 72) at [8, 48] - same place in seconds
    # ([328/30, 488/30] = [10.93, 16.27] s)
    c0 = _padded_chunk(160, 128, 5, [(90, 3, 0.9, 80, 120)])
    c1 = _padded_chunk(160, 128, 5, [(20, 3, 0.85, 8.5, 48.5)])
    chunks = [(c0[0], c0[1], 0), (c1[0], c1[1], 72)]
    duration = 210 * 4 / 30
    out = postprocess_chunks(
        chunks, duration, FPS, STRIDE, NFRAMES, PostprocessConfig(nms_method="hard")
    )
    assert len(out) == 1
    assert out.labels[0] == 3 and out.scores[0] == 0.9
    # voted between the two views: start = (0.9 * 80 + 0.85 * 80.5) / 1.75 snippets
    start = (0.9 * 80 + 0.85 * 80.5) / 1.75
    assert out.segments[0, 0] == pytest.approx((start * 4 + 8) / 30)
    # soft-NMS keeps the duplicate only as a heavily decayed echo (tIoU 0.975 -> x0.15)
    soft = postprocess_chunks(chunks, duration, FPS, STRIDE, NFRAMES, PostprocessConfig())
    assert soft.scores[0] == 0.9
    assert soft.scores[1] < 0.85 * math.exp(-(0.95**2) / 0.5)
    # without the merge each chunk alone would report the action
    for ch in chunks:
        assert len(postprocess_chunks([ch], duration, FPS, STRIDE, NFRAMES)) == 1


def test_postprocess_chunks_empty_inputs() -> None:
    assert len(postprocess_chunks([], 10.0, FPS, STRIDE, NFRAMES)) == 0
    zeros = (np.zeros((50, 3)), np.zeros((50, 2)), 0)
    assert len(postprocess_chunks([zeros], 10.0, FPS, STRIDE, NFRAMES)) == 0
    with pytest.raises(ValueError):
        postprocess_chunks([zeros], -1.0, FPS, STRIDE, NFRAMES)


def test_postprocess_respects_max_detections_and_order() -> None:
    rng = np.random.default_rng(6)
    scores = rng.uniform(0, 1, (2000, 20)) ** 6
    segs = np.sort(rng.uniform(0, 1500, (2000, 2)), axis=1)
    cfg = PostprocessConfig(max_detections=50)
    out = postprocess_chunks([(scores, segs, 0)], 200.0, FPS, STRIDE, NFRAMES, cfg)
    assert len(out) == 50
    assert np.all(np.diff(out.scores) <= 0)
    assert np.all((out.segments >= 0) & (out.segments <= 200.0))
    assert np.all(out.segments[:, 1] - out.segments[:, 0] >= 0.05 - 1e-9)


# --------------------------------------------------------------------------- config


def test_config_defaults_and_from_dict() -> None:
    cfg = PostprocessConfig()
    assert (cfg.score_thresh, cfg.pre_nms_topk, cfg.nms_method, cfg.sigma) == (
        0.001,
        2000,
        "soft",
        0.5,
    )
    assert (cfg.max_detections, cfg.voting_thresh, cfg.multiclass, cfg.min_duration) == (
        200,
        0.7,
        True,
        0.05,
    )
    assert PostprocessConfig.from_dict(None) == cfg
    custom = PostprocessConfig.from_dict({"nms_method": "hard", "iou_threshold": 0.5})
    assert custom.nms_method == "hard" and custom.iou_threshold == 0.5 and custom.sigma == 0.5


def test_config_rejects_unknown_keys_naming_them() -> None:
    with pytest.raises(AMNetError, match=r"nms_sigma.*top_k|top_k.*nms_sigma") as info:
        PostprocessConfig.from_dict({"nms_sigma": 0.5, "top_k": 10, "sigma": 0.4})
    assert "nms_sigma" in str(info.value) and "top_k" in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"nms_method": "gaussian"},
        {"sigma": 0},
        {"max_detections": 0},
        {"pre_nms_topk": 1.5},
        {"score_thresh": -0.1},
        {"iou_threshold": 1.5},
        {"voting_thresh": float("nan")},
        {"multiclass": "yes"},
        {"min_duration": "0.1"},
    ],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(AMNetError, match=next(iter(bad))):
        PostprocessConfig.from_dict(bad)


def test_chunk_batches_pad_each_batch_to_its_longest_chunk():
    from amnet.postprocess import chunk_batches

    feats = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    batches = list(chunk_batches(feats, max_len=4, overlap=0.25, batch_size=2))
    # Windows of 4 with step 3: [0,4) [3,7) [6,10) -> batches of 2 and 1.
    assert [b[2] for b in batches] == [[0, 3], [6]]
    x, lengths, _ = batches[0]
    assert x.shape == (2, 4, 2) and lengths.tolist() == [4, 4]
    assert np.array_equal(x[1], feats[3:7])
    lone, lone_lengths, _ = batches[1]
    assert np.shares_memory(lone, feats) and lone_lengths.tolist() == [4]
    short = list(chunk_batches(feats[:3], max_len=4, overlap=0.25, batch_size=2))
    assert len(short) == 1 and short[0][0].shape == (1, 3, 2)


def test_score_voting_in_row_blocks_equals_one_block(monkeypatch):
    """Voting takes the kept detections in blocks (bounded memory on long videos); the
    segments it returns do not depend on the block size."""
    import amnet.postprocess as pp

    rng = np.random.default_rng(3)
    starts = rng.uniform(0, 500, 3000)
    dets = Detections(
        np.stack([starts, starts + rng.uniform(0.5, 20, 3000)], axis=1),
        rng.uniform(0.001, 1, 3000),
        rng.integers(0, 3, 3000),
    )
    whole = pp.nms(dets, pp.PostprocessConfig())
    monkeypatch.setattr(pp, "_VOTE_BLOCK_VALUES", 5000)  # a handful of rows per block
    blocked = pp.nms(dets, pp.PostprocessConfig())
    np.testing.assert_allclose(blocked.segments, whole.segments, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(blocked.scores, whole.scores)


@pytest.mark.parametrize("seed", range(6))
def test_an_nms_run_to_its_end_over_overlap_lists_equals_the_group_by_group_one(seed, monkeypatch):
    """A full NMS (a stream's) touches only the segments each pick overlaps, from lists built
    once; with those lists disabled (their size budget at 0) it computes each pick's tIoU over
    its whole group. Both give the same picks and scores to the bit: soft and hard NMS, per
    class or not, anchors (fixed scores), a stop score, tied scores and touching or empty
    segments, decays that underflow."""
    from amnet import postprocess

    rng = np.random.default_rng(seed)
    for case in range(12):
        n = int(rng.integers(1, 300))
        starts = rng.uniform(0, 60, n)
        segs = np.stack([starts, starts + rng.choice([0.0, 0.3, 3.0, 25.0], n) * rng.random(n)], 1)
        if case % 3 == 0:
            segs = np.round(segs)  # touching segments, equal starts, segments of no length
        scores = rng.random(n) if case % 2 else np.round(rng.random(n), 1)  # ties
        dets = Detections(segs, scores, rng.integers(0, 3, n))
        cfg = PostprocessConfig(
            nms_method=("soft", "hard")[case % 2],
            sigma=float(rng.choice([0.5, 0.05, 1e-4])),
            iou_threshold=float(rng.choice([0.0, 0.1, 0.7])),
            multiclass=bool(case % 4),
            min_score=float(rng.choice([0.001, 0.0, 0.3])),
        )
        kwargs = dict(
            limit=n,
            fixed=rng.random(n) < 0.1 if case % 5 else None,
            stop_below=float(rng.choice([-np.inf, 0.2])),
        )
        with np.errstate(invalid="ignore"):  # -inf * 0 where a decay underflows, as before
            got = postprocess._suppress(dets, cfg, **kwargs)
            monkeypatch.setattr(postprocess, "_PAIRS_PER_SEGMENT", 0)
            want = postprocess._suppress(dets, cfg, **kwargs)
            monkeypatch.undo()
        assert len(want[0]) > 0
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
