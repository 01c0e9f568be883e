"""The detection metric against a plain loop implementation of the protocol and hand-worked cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from amnet.annotations import VideoAnnotation, build_label_map, load_annotations, select_subset
from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.layouts import layout_path
from amnet.metrics import EvaluationResult, evaluate_detection, format_table, parse_tiou

THUMOS = layout_path("thumos14")


# --------------------------------------------------------------------------------------------
# Reference: the protocol written as plainly as possible, one prediction at a time.
# --------------------------------------------------------------------------------------------


def reference_tiou(ps: float, pe: float, gs: float, ge: float) -> float:
    inter = max(min(pe, ge) - max(ps, gs), 0.0)
    union = (pe - ps) + (ge - gs) - inter
    return inter / union if union > 0 else 0.0


def reference_voc_ap(tp: list[int], num_positives: int) -> float:
    """The classic VOC all-point interpolated AP with explicit recall/precision lists."""
    recall, precision = [], []
    hits = 0
    for i, t in enumerate(tp):
        hits += t
        recall.append(hits / num_positives)
        precision.append(hits / (i + 1))
    mrec = [0.0, *recall, 1.0]
    mprec = [0.0, *precision, 0.0]
    for i in range(len(mprec) - 2, -1, -1):
        mprec[i] = max(mprec[i], mprec[i + 1])
    ap = 0.0
    for i in range(1, len(mrec)):
        if mrec[i] != mrec[i - 1]:
            ap += (mrec[i] - mrec[i - 1]) * mprec[i]
    return ap


def reference_evaluate(ground_truth, predictions, class_names, thresholds):
    """Returns (mAP per threshold, {class name: [AP per threshold]})."""
    class_id = {}
    for i, name in enumerate(class_names):
        class_id.setdefault(name, i)
    # Clean ground truth: drop zero-length events, then duplicates of an earlier kept event.
    events: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for vid, ann in ground_truth.items():
        for (s, e), label in zip(ann.segments.tolist(), ann.labels, strict=True):
            c = class_id[label]
            if e - s < 1e-3:
                continue
            kept = events.setdefault((vid, c), [])
            if any(abs(s - ks) < 1e-3 and abs(e - ke) < 1e-3 for ks, ke in kept):
                continue
            kept.append((s, e))
    positives = {}
    for (_, c), evs in events.items():
        positives[c] = positives.get(c, 0) + len(evs)

    per_class = {}
    for c in sorted(positives):
        preds = []
        for vid, det in predictions.items():
            for (s, e), score, label in zip(
                det.segments.tolist(), det.scores.tolist(), det.labels.tolist(), strict=True
            ):
                if label == c:
                    preds.append((score, vid, s, e))
        preds = sorted(preds, key=lambda p: -p[0])  # Python's sort is stable
        aps = []
        for thr in thresholds:
            matched = {key: [False] * len(evs) for key, evs in events.items()}
            tp = []
            for _, vid, s, e in preds:
                evs = events.get((vid, c), [])
                best, best_iou = -1, -1.0
                for j, (gs, ge) in enumerate(evs):
                    if matched[(vid, c)][j]:
                        continue
                    iou = reference_tiou(s, e, gs, ge)
                    if iou >= thr and iou > best_iou:  # strict: ties go to the earlier event
                        best, best_iou = j, iou
                if best >= 0:
                    matched[(vid, c)][best] = True
                    tp.append(1)
                else:
                    tp.append(0)
            aps.append(reference_voc_ap(tp, positives[c]))
        per_class[class_names[c]] = aps
    m_ap = [
        sum(ap[t] for ap in per_class.values()) / len(per_class) for t in range(len(thresholds))
    ]
    return m_ap, per_class


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def video(
    vid: str, events: list[tuple[float, float, str]], subset: str = "test"
) -> VideoAnnotation:
    return VideoAnnotation(
        video_id=vid,
        subset=subset,
        duration=100.0,
        fps=30.0,
        segments=np.asarray([(s, e) for s, e, _ in events], dtype=np.float64).reshape(-1, 2),
        labels=[label for _, _, label in events],
        label_ids=np.full(len(events), -1, dtype=np.int64),
    )


def dets(rows: list[tuple[float, float, float, int]]) -> Detections:
    """Detections from (start, end, score, class id) rows."""
    if not rows:
        return Detections.empty()
    arr = np.asarray(rows, dtype=np.float64)
    return Detections(arr[:, :2], arr[:, 2], arr[:, 3].astype(np.int64))


def random_case(rng: np.random.Generator):
    num_classes = int(rng.integers(1, 6))
    class_names = [f"c{i}" for i in range(num_classes)]
    grid = float(rng.choice([0.5, 1.0, 0.25]))  # coarse grids make exact tIoU ties common
    gt = {}
    for v in range(int(rng.integers(1, 7))):
        events = []
        for _ in range(int(rng.integers(0, 12))):
            c = class_names[int(rng.integers(num_classes))]
            s = grid * int(rng.integers(0, 40))
            e = s + grid * int(rng.integers(1, 12))
            events.append((s, e, c))
            roll = rng.random()
            if roll < 0.15:  # duplicate within the tolerance (or exact)
                jitter = rng.choice([0.0, 4e-4, -7e-4])
                events.append((s + jitter, e - jitter, c))
            elif roll < 0.25:  # overlapping event of the same class
                events.append((s + grid, e + grid * int(rng.integers(0, 4)), c))
            elif roll < 0.3:  # zero-length event
                events.append((s, s + rng.choice([0.0, 5e-4]), c))
        gt[f"v{v}"] = video(f"v{v}", events)
    # Guarantee at least one real event.
    first = next(iter(gt.values()))
    gt[first.video_id] = video(
        first.video_id,
        [
            *zip(first.segments[:, 0], first.segments[:, 1], first.labels, strict=True),
            (1.0, 3.0, "c0"),
        ],
    )

    vids = [*gt, "unknown_a", "unknown_b"]
    preds = {}
    for vid in rng.permutation(vids).tolist():
        if rng.random() < 0.2:
            continue
        rows = []
        ann = gt.get(vid)
        for _ in range(int(rng.integers(0, 15))):
            score = float(
                rng.choice([0.9, 0.5, 0.5, 0.3, 0.1]) if rng.random() < 0.5 else rng.random()
            )
            c = int(rng.integers(num_classes))
            if ann is not None and len(ann.labels) and rng.random() < 0.6:
                k = int(rng.integers(len(ann.labels)))
                s, e = ann.segments[k]
                c = class_names.index(ann.labels[k]) if rng.random() < 0.85 else c
                s = max(0.0, s + grid * int(rng.integers(-2, 3)))
                e = max(s, e + grid * int(rng.integers(-2, 3)))
            else:
                s = grid * int(rng.integers(0, 40))
                e = s + grid * int(rng.integers(0, 10))
            rows.append((s, e, score, c))
        preds[vid] = dets(rows)
    num_t = int(rng.integers(1, 6))
    thresholds = np.sort(rng.choice([0.1, 0.3, 0.5, 0.6, 0.7, 0.9, 1.0], num_t, replace=False))
    return gt, preds, class_names, thresholds


# --------------------------------------------------------------------------------------------
# Randomised comparison with the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    for _ in range(60):
        gt, preds, class_names, thresholds = random_case(rng)
        result = evaluate_detection(gt, preds, class_names, thresholds)
        ref_map, ref_per_class = reference_evaluate(gt, preds, class_names, thresholds.tolist())
        assert result.per_class_AP.keys() == ref_per_class.keys()
        for name, aps in ref_per_class.items():
            np.testing.assert_allclose(result.per_class_AP[name], aps, rtol=0, atol=1e-9)
        np.testing.assert_allclose(result.mAP, ref_map, rtol=0, atol=1e-9)
        assert result.average_mAP == pytest.approx(float(np.mean(ref_map)), abs=1e-9)


def test_matches_reference_on_dense_contested_video() -> None:
    """Many overlapping predictions fighting over many close events: long greedy chains."""
    rng = np.random.default_rng(7)
    starts = np.cumsum(rng.uniform(0.5, 2.0, 60))
    events = [(float(s), float(s + rng.uniform(1.0, 4.0)), "a") for s in starts]
    gt = {"v": video("v", events)}
    rows = []
    for _ in range(600):
        s = float(rng.uniform(0, starts[-1]))
        rows.append((s, s + float(rng.uniform(0.5, 5.0)), float(rng.integers(0, 20)) / 20, 0))
    preds = {"v": dets(rows)}
    thresholds = np.array([0.1, 0.3, 0.5, 0.7])
    result = evaluate_detection(gt, preds, ["a"], thresholds)
    ref_map, _ = reference_evaluate(gt, preds, ["a"], thresholds.tolist())
    np.testing.assert_allclose(result.mAP, ref_map, rtol=0, atol=1e-9)
    assert 0 < result.mAP[0] < 1


# --------------------------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------------------------


def test_hand_worked_single_class() -> None:
    # GT: A=[0,10], B=[20,30]. Predictions by score:
    #   p1 [0,10]  0.9: tIoU(A)=1          -> TP
    #   p2 [1,10]  0.8: tIoU(A)=0.9 but A is taken, tIoU(B)=0 -> FP
    #   p3 [20,28] 0.7: tIoU(B)=8/10=0.8   -> TP at 0.5, FP at 0.85
    # tIoU 0.5:  precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    #            envelope at the TPs: 1 and 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # tIoU 0.85: only p1 is a TP -> AP = 1/2 * 1 = 1/2
    gt = {"v": video("v", [(0, 10, "a"), (20, 30, "a")])}
    preds = {"v": dets([(1, 10, 0.8, 0), (0, 10, 0.9, 0), (20, 28, 0.7, 0)])}
    result = evaluate_detection(gt, preds, ["a"], [0.5, 0.85])
    assert result.mAP == pytest.approx([5 / 6, 0.5], abs=1e-12)
    assert result.average_mAP == pytest.approx((5 / 6 + 0.5) / 2, abs=1e-12)
    assert result.per_class_AP == {"a": pytest.approx([5 / 6, 0.5], abs=1e-12)}


def test_hand_worked_falls_back_to_next_best_event() -> None:
    # GT: A=[0,10], B=[5,15].
    #   p1 [0,10] 0.9: tIoU(A)=1, tIoU(B)=5/15 -> takes A
    #   p2 [0,11] 0.8: tIoU(A)=10/11 (taken), tIoU(B)=6/15=0.4
    # tIoU 0.3: p2 falls back to B -> TP, TP -> AP = 1
    # tIoU 0.5: B is below the threshold -> TP, FP -> AP = 1/2
    gt = {"v": video("v", [(0, 10, "a"), (5, 15, "a")])}
    preds = {"v": dets([(0, 10, 0.9, 0), (0, 11, 0.8, 0)])}
    result = evaluate_detection(gt, preds, ["a"], [0.3, 0.5])
    assert result.mAP == pytest.approx([1.0, 0.5], abs=1e-12)


def test_hand_worked_envelope_and_missed_event() -> None:
    # Three events, predictions TP, FP, FP, TP (third event never found):
    # precision 1, 1/2, 1/3, 1/2 -> envelope at the TPs 1 and 1/2 -> AP = (1 + 1/2) / 3 = 1/2
    gt = {"v": video("v", [(0, 1, "a"), (10, 11, "a"), (20, 21, "a")])}
    preds = {"v": dets([(0, 1, 0.9, 0), (40, 41, 0.8, 0), (50, 51, 0.7, 0), (10, 11, 0.6, 0)])}
    result = evaluate_detection(gt, preds, ["a"], [0.5])
    assert result.mAP == pytest.approx([0.5], abs=1e-12)


def test_ties_keep_detection_order_within_a_video() -> None:
    # GT [0,10]; X=[0,10] (tIoU 1) and Y=[0,8] (tIoU 0.8), equal scores, threshold 0.9.
    # Y first: FP then TP -> precision 1/2 at recall 1 -> AP 1/2. X first: TP first -> AP 1.
    gt = {"v": video("v", [(0, 10, "a")])}
    y_first = evaluate_detection(gt, {"v": dets([(0, 8, 0.5, 0), (0, 10, 0.5, 0)])}, ["a"], [0.9])
    x_first = evaluate_detection(gt, {"v": dets([(0, 10, 0.5, 0), (0, 8, 0.5, 0)])}, ["a"], [0.9])
    assert y_first.mAP == pytest.approx([0.5])
    assert x_first.mAP == pytest.approx([1.0])


def test_ties_keep_video_order_of_the_mapping() -> None:
    # Class "a" has one event, in v1; v2 has only a "b" event. Equal-score "a" predictions in
    # v1 (TP) and v2 (FP): the mapping order decides which comes first -> AP(a) 1 or 1/2.
    # Class "b" has no predictions -> AP 0. mAP = (AP(a) + 0) / 2.
    gt = {"v1": video("v1", [(0, 10, "a")]), "v2": video("v2", [(0, 10, "b")])}
    tp = dets([(0, 10, 0.5, 0)])
    fp = dets([(0, 10, 0.5, 0)])
    first = evaluate_detection(gt, {"v1": tp, "v2": fp}, ["a", "b"], [0.5])
    second = evaluate_detection(gt, {"v2": fp, "v1": tp}, ["a", "b"], [0.5])
    assert first.per_class_AP == {"a": [1.0], "b": [0.0]}
    assert second.per_class_AP == {"a": [0.5], "b": [0.0]}
    assert first.mAP == pytest.approx([0.5])
    assert second.mAP == pytest.approx([0.25])


def test_unknown_videos_are_false_positives_and_absent_classes_ignored() -> None:
    # Class a: TP in v (0.5), then a higher-scored prediction for an unknown video (0.9, FP):
    #   FP, TP -> precision 1/2 at recall 1 -> AP 1/2.
    # Class c is absent from the ground truth: its predictions change nothing and it is not
    # averaged. mAP = AP(a) = 1/2.
    gt = {"v": video("v", [(0, 10, "a")])}
    preds = {
        "v": dets([(0, 10, 0.5, 0), (0, 10, 0.99, 2)]),
        "nowhere": dets([(0, 10, 0.9, 0)]),
    }
    result = evaluate_detection(gt, preds, ["a", "b", "c"], [0.5])
    assert result.per_class_AP == {"a": [0.5]}
    assert result.mAP == pytest.approx([0.5])


def test_zero_length_and_duplicate_events_are_dropped() -> None:
    # Kept: [0,10] only. [0.0005, 10.0004] duplicates it, [5, 5.0005] is zero-length, and
    # [30, 30] too. One exact prediction -> AP 1 (with 4 positives it would be 1/4).
    events = [(0, 10, "a"), (0.0005, 10.0004, "a"), (5, 5.0005, "a"), (30, 30, "a")]
    gt = {"v": video("v", events)}
    result = evaluate_detection(gt, {"v": dets([(0, 10, 0.9, 0)])}, ["a"], [0.5])
    assert result.mAP == pytest.approx([1.0])
    # The same bounds in another class, or 2 ms apart, are not duplicates.
    gt = {"v": video("v", [(0, 10, "a"), (0, 10, "b"), (0.002, 10, "a")])}
    result = evaluate_detection(gt, {"v": dets([(0, 10, 0.9, 0)])}, ["a", "b"], [0.5])
    assert result.per_class_AP == {"a": [0.5], "b": [0.0]}


def test_perfect_predictions_score_one_on_thumos_test() -> None:
    videos = load_annotations(THUMOS)
    class_names = build_label_map(videos.values(), THUMOS)
    gt = select_subset(videos, "test", THUMOS)
    ids = {n: i for i, n in enumerate(class_names)}
    preds = {}
    for vid, ann in gt.items():
        keep = (ann.segments[:, 1] - ann.segments[:, 0]) >= 1e-3
        # Drop duplicates the way the metric does, so every prediction finds its event.
        rows: list[tuple[float, float, float, int]] = []
        for (s, e), label, k in zip(ann.segments.tolist(), ann.labels, keep.tolist(), strict=True):
            dup = any(
                abs(s - rs) < 1e-3 and abs(e - re) < 1e-3 and ids[label] == rc
                for rs, re, _, rc in rows
            )
            if k and not dup:
                rows.append((s, e, 1.0, ids[label]))
        preds[vid] = dets(rows)
    result = evaluate_detection(gt, preds, class_names, parse_tiou("0.3:0.7:0.1"))
    assert result.mAP == pytest.approx([1.0] * 5)
    assert len(result.per_class_AP) == 20


def test_empty_predictions_score_zero() -> None:
    gt = {"v": video("v", [(0, 10, "a")])}
    result = evaluate_detection(gt, {}, ["a"], [0.5, 0.7])
    assert result.mAP == [0.0, 0.0]
    assert result.average_mAP == 0.0


# --------------------------------------------------------------------------------------------
# Errors, thresholds, output
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preds", "message"),
    [
        ({"v": dets([(0, 10, math.nan, 0)])}, "non-finite"),
        ({"v": dets([(0, math.inf, 0.5, 0)])}, "non-finite"),
        ({"v": dets([(5, 4, 0.5, 0)])}, "negative-length"),
        ({"v": dets([(0, 10, 0.5, 3)])}, "class id"),
        ({"v": dets([(0, 10, 0.5, -1)])}, "class id"),
    ],
)
def test_bad_predictions_raise(preds: dict, message: str) -> None:
    gt = {"v": video("v", [(0, 10, "a")])}
    with pytest.raises(AMNetError, match=message):
        evaluate_detection(gt, preds, ["a"], [0.5])


def test_arrays_of_the_wrong_shape_are_refused_not_re_read() -> None:
    """Segments that are not [N, 2] are an error, not reshaped into other pairs; predictions
    that are not Detections (a list of Detection objects) are named."""
    with pytest.raises(ValueError, match=r"segments must be \[N, 2\], got \[2, 3\]"):
        Detections(np.arange(6.0).reshape(2, 3), [0.9, 0.8, 0.7], [0, 0, 0])
    with pytest.raises(ValueError, match=r"segments must be \[N, 2\], got \[4\]"):
        Detections(np.arange(4.0), [0.9, 0.8], [0, 0])
    with pytest.raises(ValueError, match=r"segments must be \[N, 2\]"):
        VideoAnnotation("v", "test", 10.0, 30.0, np.arange(6.0).reshape(2, 3), ["a"] * 3, [0] * 3)
    with pytest.raises(ValueError, match="2 segments, 1 labels"):
        VideoAnnotation("v", "test", 10.0, 30.0, np.array([[0, 1], [2, 3]]), ["a"], [0])
    assert Detections([], [], []).segments.shape == (0, 2)
    gt = {"v": video("v", [(0, 10, "a")])}
    with pytest.raises(AMNetError, match="video 'v': expected Detections, got list"):
        evaluate_detection(gt, {"v": [(0, 10, 0.9, 0)]}, ["a"], [0.5])


def test_bad_ground_truth_raises() -> None:
    with pytest.raises(AMNetError, match="not in the class list"):
        evaluate_detection({"v": video("v", [(0, 10, "zzz")])}, {}, ["a"], [0.5])
    with pytest.raises(AMNetError, match="no"):
        evaluate_detection({"v": video("v", [(3, 3, "a")])}, {}, ["a"], [0.5])


@pytest.mark.parametrize("thresholds", [[], [0.0], [1.5], [math.nan], [-0.1]])
def test_bad_thresholds_raise(thresholds: list[float]) -> None:
    gt = {"v": video("v", [(0, 10, "a")])}
    with pytest.raises(AMNetError):
        evaluate_detection(gt, {}, ["a"], thresholds)


def test_label_ids_number_the_classes() -> None:
    def videos(*labels: tuple[str, int]) -> list[VideoAnnotation]:
        segments = np.array([[0.0, 1.0]] * len(labels))
        names, ids = [n for n, _ in labels], np.array([i for _, i in labels])
        return [VideoAnnotation("v", "test", 10.0, 30.0, segments, names, ids)]

    assert build_label_map(videos(("A", 0), ("B", 2))) == ["A", "class_1", "B"]  # a gap
    # An id far beyond the classes would allocate a list that long (10**12: memory runs out).
    with pytest.raises(AMNetError, match=r"label_id 65536 is out of range: .*at most 65535"):
        build_label_map(videos(("A", 65536)))
    # A placeholder that is also a label would be a second class of that name: half its
    # detections would count against the other.
    with pytest.raises(AMNetError, match="label_id 1 is unused and its placeholder name"):
        build_label_map(videos(("A", 0), ("class_1", 2)))


def test_parse_tiou() -> None:
    assert parse_tiou("0.3:0.7:0.1").tolist() == [0.3, 0.4, 0.5, 0.6, 0.7]
    values = parse_tiou("0.5:0.95:0.05").tolist()
    assert values == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert parse_tiou("0.5,0.75").tolist() == [0.5, 0.75]
    assert parse_tiou(" 0.5 ").tolist() == [0.5]
    assert parse_tiou("0.1:1.0:0.3").tolist() == [0.1, 0.4, 0.7, 1.0]
    assert parse_tiou("0.5:0.5:0.1").tolist() == [0.5]


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "a",
        "0.3:0.7",
        "0.3:0.7:0",
        "0.3:0.7:-0.1",
        "0:0.5:0.1",
        "0.5,1.2",
        "nan",
        "0.1:1:1e-6",
        "0.5,,0.7",
    ],
)
def test_parse_tiou_rejects(spec: str) -> None:
    with pytest.raises(AMNetError):
        parse_tiou(spec)
    with pytest.raises(AMNetError, match="is a string"):
        parse_tiou(None)  # type: ignore[arg-type]


def test_a_threshold_given_twice_is_refused() -> None:
    """The average over thresholds would weigh it twice; in a list or a config alike."""
    with pytest.raises(AMNetError, match=r"tIoU threshold 0\.5 given twice"):
        parse_tiou("0.5,0.7,0.5")
    gt = {"v": video("v", [(0, 10, "a")])}
    with pytest.raises(AMNetError, match=r"tIoU threshold 0\.7 given twice"):
        evaluate_detection(gt, {"v": dets([(0, 10, 0.9, 0)])}, ["a"], [0.7, 0.7])


def test_parse_tiou_hints_at_swapped_range() -> None:
    with pytest.raises(AMNetError, match=r"did you mean 0\.3:0\.7:0\.1"):
        parse_tiou("0.3:0.1:0.7")


def test_to_json_and_table() -> None:
    gt = {"v": video("v", [(0, 10, "a"), (20, 30, "a")])}
    preds = {"v": dets([(0, 10, 0.9, 0), (1, 10, 0.8, 0), (20, 28, 0.7, 0)])}
    result = evaluate_detection(gt, preds, ["a"], parse_tiou("0.5,0.85"))
    assert isinstance(result, EvaluationResult)
    obj = json.loads(json.dumps(result.to_json()))
    assert set(obj) == {"tiou_thresholds", "mAP", "average_mAP", "per_class_AP"}
    assert obj["tiou_thresholds"] == [0.5, 0.85]
    assert obj["mAP"] == pytest.approx([5 / 6, 0.5])
    assert obj["per_class_AP"] == {"a": pytest.approx([5 / 6, 0.5])}
    table = format_table(result)
    assert "83.33" in table and "50.00" in table and "66.67" in table
    assert "0.85" in table and "avg" in table
