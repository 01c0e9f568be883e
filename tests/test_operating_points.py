"""Per-class operating points: thresholds chosen on a labelled set (amnet.metrics), written and
read back (amnet.thresholds), and applied by the runtime (amnet-infer --class-thresholds)."""

from __future__ import annotations

import io
import json
import math
import sys

import numpy as np
import pytest
from clitools import run_main
from test_metrics import dets, reference_tiou, video

from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.metrics import OperatingPoint, operating_points
from amnet.thresholds import apply_class_thresholds, read_class_thresholds, write_operating_points

# Class "a": events A [0,10], B [20,30], C [40,50]. By score:
#   0.9 [0,10] TP, 0.8 [1,10] FP (A taken), 0.7 [20,28] TP (tIoU 0.8), 0.6 [60,70] FP,
#   0.5 [40,50] TP. Cut after each: precision 1, 1/2, 2/3, 1/2, 3/5; recall 1/3, 1/3, 2/3, 2/3, 1.
# Class "b": no events. Class "c": one event, only a wrong detection.
GT = {
    "v": video("v", [(0, 10, "a"), (20, 30, "a"), (40, 50, "a"), (80, 90, "c")]),
}
PREDS = {
    "v": dets([(1, 10, 0.8, 0), (0, 10, 0.9, 0), (20, 28, 0.7, 0), (60, 70, 0.6, 0),
               (40, 50, 0.5, 0), (0, 5, 0.9, 1), (0, 5, 0.4, 2)]),
}  # fmt: skip
NAMES = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("target", "want"),
    [
        (0.9, OperatingPoint(0.9, 1.0, 1 / 3, 1, 3)),
        (0.65, OperatingPoint(0.7, 2 / 3, 2 / 3, 3, 3)),  # the cut after 0.5 gives only 3/5
        (0.6, OperatingPoint(0.5, 0.6, 1.0, 5, 3)),
        (None, OperatingPoint(0.5, 0.6, 1.0, 5, 3)),  # F1 0.5, 0.4, 2/3, 4/7, 3/4
    ],
)
def test_hand_worked_thresholds(target, want):
    points = operating_points(GT, PREDS, NAMES, tiou=0.5, target_precision=target)
    got = points["a"]
    assert got.threshold == want.threshold and got.detections == want.detections
    assert got.events == want.events
    assert got.precision == pytest.approx(want.precision) and got.recall == pytest.approx(
        want.recall
    )
    # No events, or never right: no threshold (the runtime then keeps none).
    assert points["b"] == OperatingPoint(None, 0.0, 0.0, 0, 0)
    assert points["c"] == OperatingPoint(None, 0.0, 0.0, 0, 1)


def test_a_threshold_never_splits_equal_scores():
    # A TP and an FP share the top score: no cut keeps one without the other, so a precision of
    # 1 is out of reach even though the first detection alone is right.
    gt = {"v": video("v", [(0, 10, "a"), (20, 30, "a")])}
    preds = {"v": dets([(0, 10, 0.8, 0), (50, 60, 0.8, 0), (20, 30, 0.5, 0)])}
    assert operating_points(gt, preds, ["a"], target_precision=1.0)["a"].threshold is None
    point = operating_points(gt, preds, ["a"], target_precision=0.5)["a"]
    assert (point.threshold, point.detections, point.recall) == (0.5, 3, 1.0)


def _brute_hits(gt, preds, c: int, name: str, tiou: float, cut: float) -> tuple[int, int]:
    """(true positives, kept) of class ``c`` among detections scoring >= ``cut``: greedy in
    score order (stable), each taking the free event of its video with the highest tIoU."""
    rows = [
        (score, vid, s, e)
        for vid, d in preds.items()
        for (s, e), score, label in zip(d.segments.tolist(), d.scores.tolist(), d.labels.tolist(), strict=True)
        if label == c and score >= cut
    ]  # fmt: skip
    rows.sort(key=lambda r: -r[0])
    taken: set[tuple[str, int]] = set()
    hits = 0
    for _, vid, s, e in rows:
        ann = gt.get(vid)
        events = [] if ann is None else [
            (j, seg) for j, (seg, lab) in enumerate(zip(ann.segments.tolist(), ann.labels, strict=True)) if lab == name
        ]  # fmt: skip
        best, best_iou = None, -1.0
        for j, (gs, ge) in events:
            iou = reference_tiou(s, e, gs, ge)
            if (vid, j) not in taken and iou >= tiou and iou > best_iou:
                best, best_iou = j, iou
        if best is not None:
            taken.add((vid, best))
            hits += 1
    return hits, len(rows)


@pytest.mark.parametrize("seed", range(4))
def test_reported_points_hold_and_none_is_better(seed):
    """On random sets: what each point reports is what its threshold gives (counted by brute
    force), and no other threshold gives more recall at the target precision."""
    rng = np.random.default_rng(seed)
    names = ["x", "y", "z"]
    for _ in range(15):
        gt, preds = {}, {}
        for v in range(4):
            events = [(s, s + float(rng.integers(2, 9)), names[int(rng.integers(3))])
                      for s in rng.choice(np.arange(0, 200, 10.0), 5, replace=False)]  # fmt: skip
            gt[f"v{v}"] = video(f"v{v}", events)
            rows = []
            for s, e, label in events:
                if rng.random() < 0.7:
                    shift = float(rng.integers(-3, 4))
                    rows.append((s + shift, e + shift, float(rng.choice([0.9, 0.6, rng.random()])),
                                 names.index(label)))  # fmt: skip
            for _ in range(int(rng.integers(0, 6))):
                s = float(rng.integers(0, 200))
                rows.append((s, s + 5.0, float(rng.random()), int(rng.integers(3))))
            preds[f"v{v}"] = dets(rows)
        target = float(rng.choice([0.5, 0.7, 0.9]))
        points = operating_points(gt, preds, names, tiou=0.5, target_precision=target)
        for c, name in enumerate(names):
            point = points[name]
            if point.threshold is not None:
                hits, kept = _brute_hits(gt, preds, c, name, 0.5, point.threshold)
                assert kept == point.detections and kept > 0
                assert point.precision == pytest.approx(hits / kept)
                assert point.recall == pytest.approx(hits / point.events)
                assert point.precision >= target - 1e-12
            best_recall = point.recall if point.threshold is not None else -1.0
            scores = {s for d in preds.values() for s, lab in zip(d.scores, d.labels, strict=True) if lab == c}  # fmt: skip
            for cut in scores:
                hits, kept = _brute_hits(gt, preds, c, name, 0.5, cut)
                if hits / kept >= target and point.events:
                    assert hits / point.events <= best_recall + 1e-12, (name, cut)


def test_bad_targets_are_refused():
    for bad in (0.0, 1.5, -0.1, float("nan"), True, "0.9"):
        with pytest.raises(AMNetError, match="target precision"):
            operating_points(GT, PREDS, NAMES, target_precision=bad)
    for bad in ([0.5, 0.9], 0.0, float("nan"), "0.5"):  # one tIoU: a list would use its first
        with pytest.raises(AMNetError, match="one number in"):
            operating_points(GT, PREDS, NAMES, tiou=bad)
    # numpy scalars are numbers
    points = operating_points(GT, PREDS, NAMES, np.float32(0.5), np.float64(0.65))
    assert points == operating_points(GT, PREDS, NAMES, 0.5, 0.65)


def test_the_file_round_trips_and_cuts_detections(tmp_path):
    path = tmp_path / "ops.json"
    points = operating_points(GT, PREDS, NAMES, target_precision=0.65)
    write_operating_points(path, points, 0.5, 0.65)
    data = json.loads(path.read_text())
    assert data["target"] == {"precision": 0.65} and data["classes"]["b"]["threshold"] is None
    thresholds = read_class_thresholds(path, ["c", "a", "b"])  # the model's order, not the file's
    assert thresholds[1] == 0.7 and math.isinf(thresholds[0]) and math.isinf(thresholds[2])
    kept = apply_class_thresholds(PREDS["v"], read_class_thresholds(path, NAMES))
    assert sorted(kept.scores.tolist()) == [0.7, 0.8, 0.9]  # class a at >= 0.7; b and c none
    assert set(kept.labels.tolist()) == {0}
    assert len(apply_class_thresholds(Detections.empty(), thresholds)) == 0


@pytest.mark.parametrize(
    ("detections", "thresholds", "message"),
    [
        (PREDS["v"], np.array([0.5, 0.5]), r"class ids 0\.\.2 for 2 class thresholds"),  # too few
        (PREDS["v"], np.full((3, 1), 0.5), r"one score in \[0, 1\]"),  # not [K]
        (PREDS["v"], np.array([0.5, np.nan, 0.5]), r"one score in \[0, 1\]"),
        (PREDS["v"], np.array([0.5, -np.inf, 0.5]), r"one score in \[0, 1\]"),
        (PREDS["v"], np.array([0.5, 1.5, 0.5]), r"one score in \[0, 1\]"),
        (PREDS["v"], ["0.5", "x", None], r"one score in \[0, 1\]"),
        (list(PREDS["v"].scores), np.full(3, 0.5), "must be Detections"),
    ],
)
def test_applying_thresholds_checks_them(detections, thresholds, message):
    """Thresholds that are not one cut per class of these detections are refused, never
    indexed out of range or broadcast into a wrong answer; a list of values works."""
    with pytest.raises(AMNetError, match=message):
        apply_class_thresholds(detections, thresholds)
    kept = apply_class_thresholds(PREDS["v"], [0.7, 1.0, math.inf])
    assert sorted(kept.scores.tolist()) == [0.7, 0.8, 0.9]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "malformed operating points file"),
        ('{"results": {}}', "not an operating points file"),
        ('{"format": "amnet-operating-points", "version": 7, "classes": {}}', "version 7"),
        ('{"format": "amnet-operating-points", "version": 1, "classes": {"a": {"threshold": 0.5}}}',
         r"no threshold for the model's class\(es\) \['b'\]"),
        ('{"format": "amnet-operating-points", "version": 1, "classes": {"a": {"threshold": 0.5}, "b": {"threshold": "0.5"}}}',
         "class 'b': threshold must be"),
        ('{"format": "amnet-operating-points", "version": 1, "classes": {"a": {"threshold": 1.5}, "b": {"threshold": 0.1}}}',
         "class 'a': threshold must be"),
        ('{"format": "amnet-operating-points", "version": 1, "classes": {"a": {"threshold": true}, "b": {"threshold": 0.1}}}',
         "class 'a': threshold must be"),
        ('{"format": "amnet-operating-points", "version": 1, "classes": {"a": 3, "b": {"threshold": 0.1}}}',
         "class 'a': threshold must be"),
        ('{"format": "amnet-operating-points", "version": 1, "classes": {"a": {}, "b": {"threshold": 0.1}}}',
         "class 'a': threshold must be"),
    ],
)  # fmt: skip
def test_bad_threshold_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "ops.json"
    path.write_text(content)
    with pytest.raises(AMNetError, match=message) as info:
        read_class_thresholds(path, ["a", "b"])
    assert "\n" not in str(info.value)


def test_eval_writes_points_and_infer_applies_them(models, tmp_path, monkeypatch):
    data = models["data"]
    test_files = [str(p) for p in sorted((data / "features").glob("video_test_*.npy"))]
    results, ops = tmp_path / "results.json", tmp_path / "ops.json"
    proc = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]), *test_files,
                    "-q", "-o", str(results))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    gt = str(data / "annotations.json")
    # The session's model is barely trained: its best-F1 points, not a high precision.
    proc = run_main("amnet.cli.evaluate", "--gt", gt, "--subset", "test", "--pred", str(results),
                    "--operating-points", str(ops))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "operating points (best F1 at tIoU 0.5)" in proc.stdout
    assert "avg" in proc.stdout  # the mAP table too
    names = json.loads(results.read_text())
    cuts = json.loads(ops.read_text())["classes"]
    assert any(c["threshold"] is not None for c in cuts.values())

    cut = tmp_path / "cut.json"
    proc = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]), *test_files,
                    "-q", "-o", str(cut), "--class-thresholds", str(ops))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    every, kept = names["results"], json.loads(cut.read_text())["results"]
    assert kept.keys() == every.keys()
    for vid, found in every.items():
        want = [d for d in found if cuts[d["label"]]["threshold"] is not None
                and d["score"] >= cuts[d["label"]]["threshold"]]  # fmt: skip
        assert kept[vid] == want
    assert 0 < sum(map(len, kept.values())) < sum(map(len, every.values()))

    # A live stream: the same cut on what it emits.
    rng = np.random.default_rng(0)
    features = np.abs(rng.normal(0.0, 0.3, (400, 2048))).astype("<f4")
    runs = {}
    for flag in ([], ["--class-thresholds", str(ops)]):
        stdin = io.TextIOWrapper(io.BytesIO(features.tobytes()))
        monkeypatch.setattr(sys, "stdin", stdin)
        proc = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]), "--stream",
                        "--dim", "2048", "-q", *flag)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        runs[bool(flag)] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert runs[True] == [d for d in runs[False] if cuts[d["label"]]["threshold"] is not None
                          and d["score"] >= cuts[d["label"]]["threshold"]]  # fmt: skip
    assert len(runs[False]) > len(runs[True])


def test_operating_point_options_are_checked(models, tmp_path):
    data = models["data"]
    gt = str(data / "annotations.json")
    results = tmp_path / "results.json"
    results.write_text('{"results": {}}')
    base = ["--gt", gt, "--subset", "test", "--pred", str(results)]
    cases = [
        (["--target-precision", "0.9"], "--target-precision goes with --operating-points"),
        (["--operating-points", str(tmp_path / "o.json"), "--target-precision", "1.5"],
         "--target-precision must be in (0, 1]"),
        (["--operating-points", str(tmp_path / "o.json"), "--operating-tiou", "0"],
         "--operating-tiou must be in (0, 1]"),
        (["--operating-points", str(results)], "results.json"),  # onto an input: refused
    ]  # fmt: skip
    for extra, message in cases:
        proc = run_main("amnet.cli.evaluate", *base, *extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    assert results.read_text() == '{"results": {}}' and not (tmp_path / "o.json").exists()
    proc = run_main("amnet.cli.evaluate", "--ckpt", str(models["pt"]), "--data", str(data),
                    "--operating-points", str(tmp_path / "o.json"))  # fmt: skip
    assert proc.returncode == 2 and "--operating-points is for file mode" in proc.stderr
    proc = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]),
                    str(data / "features"), "--class-thresholds", str(results))  # fmt: skip
    assert proc.returncode == 2 and "not an operating points file" in proc.stderr
