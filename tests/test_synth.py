"""amnet-synth: layouts, feature statistics, determinism, learnability and bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from clitools import run_main

from amnet import synth
from amnet.annotations import load_annotations
from amnet.baseline import PriorBaseline
from amnet.cli.synth import main as synth_main
from amnet.detections import Detections
from amnet.layouts import layout_path
from amnet.metrics import evaluate_detection

THUMOS14_JSON = layout_path("thumos14")  # shipped with the package
TIOU = [0.3, 0.4, 0.5, 0.6, 0.7]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _lag1(x: np.ndarray) -> float:
    """Lag-1 temporal correlation of a [T, C] array around its overall mean."""
    xc = x.astype(np.float64) - x.mean()
    return float((xc[1:] * xc[:-1]).sum() / (xc**2).sum())


# --------------------------------------------------------------------------------------------
# Determinism and the written files
# --------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    args = ["--preset", "tiny", "--videos", "2", "--dim", "48", "-q"]
    assert synth_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert synth_main([*args, "--out", str(tmp_path / "b")]) == 0
    assert synth_main([*args, "--seed", "1", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert len(a) == 1 + 4  # annotations + 2 videos x 2 splits
    assert a == b
    for name in a:
        if name.startswith("features/") and name in c:
            assert a[name] != c[name]
    assert a["annotations.json"] != c["annotations.json"]


def test_smaller_run_is_a_prefix_of_a_larger_one(tmp_path: Path) -> None:
    args = ["--preset", "tiny", "--subset", "test", "--dim", "32", "-q"]
    assert synth_main([*args, "--videos", "2", "--out", str(tmp_path / "small")]) == 0
    assert synth_main([*args, "--videos", "4", "--out", str(tmp_path / "large")]) == 0
    small, large = _files(tmp_path / "small"), _files(tmp_path / "large")
    features = [name for name in small if name.startswith("features/")]
    assert len(features) == 2 and len(large) == 5
    for name in features:
        assert small[name] == large[name]
    small_db = json.loads(small["annotations.json"])["database"]
    large_db = json.loads(large["annotations.json"])["database"]
    assert all(large_db[vid] == entry for vid, entry in small_db.items())


def test_written_dataset_matches_its_annotations(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert (
        synth_main(["--preset", "tiny", "--videos", "3", "--dim", "40", "-q", "--out", str(out)])
        == 0
    )
    videos = load_annotations(out / "annotations.json")
    assert len(videos) == 6
    for vid, video in videos.items():
        x = np.load(out / "features" / f"{vid}.npy")
        assert x.dtype == np.float32 and x.shape == (synth.num_snippets(video.duration), 40)
        assert np.isfinite(x).all() and (x >= 0).all()
        assert video.fps == 30.0
        assert [synth.TINY_CLASSES[i] for i in video.label_ids] == video.labels


def test_snippet_convention() -> None:
    assert synth.num_snippets(33.83) == round(33.83 * 30 / 4)
    assert synth.snippet_centres(3).tolist() == pytest.approx([8 / 30, 12 / 30, 16 / 30])


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


def _check_segments(videos: list) -> None:
    for v in videos:
        s = v.segments
        assert len(s) >= 1
        assert (s[:, 1] > s[:, 0]).all(), v.video_id
        assert (s[:, 0] >= 0).all() and (s[:, 1] <= v.duration + 1e-9).all(), v.video_id
        assert (s[1:, 0] - s[:-1, 1] >= synth.MIN_GAP_S - 2e-3).all(), v.video_id  # no overlap
        assert len(v.labels) == len(s) == len(v.label_ids)


def test_tiny_preset_bounds() -> None:
    videos = synth.draw_layout("tiny", seed=3)
    val = [v for v in videos if v.subset == "validation"]
    test = [v for v in videos if v.subset == "test"]
    assert (len(val), len(test)) == (80, 40)
    _check_segments(videos)
    for v in videos:
        assert 96 <= synth.num_snippets(v.duration) <= 300
        assert 1 <= len(v.segments) <= 6
        lengths = (v.segments[:, 1] - v.segments[:, 0]) * synth.FPS / synth.STRIDE
        assert lengths.min() >= 2 - 0.01 and lengths.max() <= 40 + 0.01
        assert set(v.label_ids.tolist()) <= set(range(synth.TINY_CLASS_COUNT))
        assert len(set(v.labels)) <= 2
        assert v.labels == [synth.THUMOS14_CLASSES[i] for i in v.label_ids]


def test_thumos14_preset_layout_statistics() -> None:
    videos = synth.draw_layout("thumos14", videos=600, seed=11)
    _check_segments(videos)
    targets = {"validation": (4.94, 15.0), "test": (5.02, 15.8)}
    for subset, (duration_log_mean, actions_mean) in targets.items():
        split = [v for v in videos if v.subset == subset]
        assert len(split) == 600
        durations = np.array([v.duration for v in split])
        counts = np.array([len(v.segments) for v in split])
        lengths = np.concatenate([v.segments[:, 1] - v.segments[:, 0] for v in split])
        classes = np.array([len(set(v.labels)) for v in split])
        foreground = lengths.sum() / durations.sum()

        assert np.log(durations).mean() == pytest.approx(duration_log_mean, abs=0.1)
        assert np.log(durations).std() == pytest.approx(0.84, abs=0.1)
        assert durations.min() >= 15 and durations.max() <= 1673
        assert counts.mean() == pytest.approx(actions_mean, abs=2.5)
        assert counts.max() <= 218 and counts.min() >= 1
        assert np.log(lengths).mean() == pytest.approx(1.16, abs=0.15)
        assert np.log(lengths).std() == pytest.approx(0.83, abs=0.1)
        assert (classes == 1).mean() == pytest.approx(0.75, abs=0.05)
        assert classes.max() <= 3
        # DESIGN says 29%; the real test split is 30.7% (merged) / 32.7% (summed).
        assert 0.26 <= foreground <= 0.34
        if subset == "test":
            assert 7 <= np.median(counts) <= 11
    ids = {v.label_ids[0]: v.labels[0] for v in videos}
    assert all(synth.THUMOS14_CLASSES[i] == name for i, name in ids.items())
    assert len(ids) == 20


def test_related_classes_co_occur() -> None:
    videos = synth.draw_layout("thumos14", videos=400, seed=5)
    pairs = [frozenset(v.labels) for v in videos if len(set(v.labels)) == 2]
    assert pairs
    in_group = [
        p for p in pairs if any(p <= set(members) for members in synth.CLASS_GROUPS.values())
    ]
    assert len(in_group) / len(pairs) > 0.3  # uniform partners would give ~0.1


def test_layout_copies_a_real_annotation_file(tmp_path: Path) -> None:
    out = tmp_path / "real"
    argv = ["--layout", "thumos14", "--subset", "test", "--videos", "3", "--dim", "16"]
    assert synth_main([*argv, "-q", "--out", str(out)]) == 0
    source = json.loads(THUMOS14_JSON.read_text())["database"]
    first = sorted(vid for vid, v in source.items() if v["subset"] == "Test")[:3]
    written = json.loads((out / "annotations.json").read_text())["database"]
    assert sorted(written) == first
    for vid in first:
        got, want = written[vid], source[vid]
        assert got["subset"] == "Test" and got["fps"] == 30.0
        assert got["duration"] == pytest.approx(want["duration"], abs=1e-3)
        assert [a["label"] for a in got["annotations"]] == [a["label"] for a in want["annotations"]]
        assert [a["label_id"] for a in got["annotations"]] == [
            a["label_id"] for a in want["annotations"]
        ]
        np.testing.assert_allclose(
            [a["segment"] for a in got["annotations"]],
            [a["segment"] for a in want["annotations"]],
            atol=1e-3,
        )
        x = np.load(out / "features" / f"{vid}.npy")
        assert x.shape == (round(want["duration"] * 30 / 4), 16)


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------


def test_feature_statistics_resemble_real_i3d() -> None:
    """DESIGN §7's real sample: mean 0.15, std 0.19, 8% zeros, lag-1 correlation 0.74."""
    videos = synth.draw_layout("thumos14", videos=5, seed=2, subsets=["test"])
    world = synth.FeatureWorld.create(2, synth.THUMOS14_CLASSES, synth.DEFAULT_DIM)
    feats = [
        synth.synthesize_features(v, world, 1.0, synth.video_rng(2, v.video_id)) for v in videos
    ]
    for v, x in zip(videos, feats, strict=True):
        assert x.dtype == np.float32 and x.shape == (synth.num_snippets(v.duration), 2048)
        assert x.min() >= 0 and np.isfinite(x).all()
        assert 0.55 <= _lag1(x) <= 0.9
    pooled = np.concatenate(feats)
    assert pooled.mean() == pytest.approx(0.15, abs=0.04)
    assert pooled.std() == pytest.approx(0.19, abs=0.05)
    assert (pooled == 0).mean() == pytest.approx(0.08, abs=0.04)
    rgb, flow = pooled[:, :1024], pooled[:, 1024:]
    assert (flow == 0).mean() > (rgb == 0).mean()  # flow is the sparser stream, as in I3D
    assert _lag1(flow) < _lag1(rgb)


def test_actions_raise_their_class_signature() -> None:
    video = synth.draw_layout("tiny", videos=1, seed=0, subsets=["test"])[0]
    world = synth.FeatureWorld.create(0, synth.TINY_CLASSES, 256)
    x = synth.synthesize_features(video, world, 0.0, synth.video_rng(0, video.video_id))
    inside = synth.foreground_mask(video)
    k = int(video.label_ids[0])
    projection = x @ world.signatures[k]
    assert projection[inside].mean() > projection[~inside].mean() * 1.2


def test_bad_arguments_of_the_library() -> None:
    from amnet.errors import AMNetError

    with pytest.raises(AMNetError):
        synth.draw_layout("huge")
    with pytest.raises(AMNetError):
        synth.draw_layout("tiny", videos=0)
    with pytest.raises(AMNetError):
        synth.draw_layout("tiny", subsets=["train"])
    with pytest.raises(AMNetError):
        synth.FeatureWorld.create(0, synth.TINY_CLASSES, 0)
    with pytest.raises(AMNetError):
        synth.Difficulty.at(-1.0)


# --------------------------------------------------------------------------------------------
# Learnable, and harder as the difficulty grows
# --------------------------------------------------------------------------------------------


def _snippet_data(subset: str, videos: int, difficulty: float, dim: int):
    layout = synth.draw_layout("tiny", videos=videos, seed=0, subsets=[subset])
    world = synth.FeatureWorld.create(0, synth.TINY_CLASSES, dim)
    xs, ys = [], []
    for v in layout:
        x = synth.synthesize_features(v, world, difficulty, synth.video_rng(0, v.video_id))
        centres = synth.snippet_centres(len(x))
        y = np.full(len(x), synth.TINY_CLASS_COUNT)  # background is the last class
        for (start, end), k in zip(v.segments, v.label_ids, strict=True):
            y[(centres >= start) & (centres <= end)] = k
        xs.append(x)
        ys.append(y)
    return layout, xs, ys


def _probe(difficulty: float, dim: int = 256):
    """Ridge least-squares per-snippet classifier (K classes + background), trained on the
    tiny validation split; returns test accuracy, and test mAP of runs of its argmax."""
    _, xs, ys = _snippet_data("validation", 40, difficulty, dim)
    layout, xt, yt = _snippet_data("test", 25, difficulty, dim)
    x, y = np.concatenate(xs), np.concatenate(ys)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    design = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    targets = np.eye(synth.TINY_CLASS_COUNT + 1)[y]
    ridge = len(design) / 100 * np.eye(design.shape[1])
    weights = np.linalg.solve(design.T @ design + ridge, design.T @ targets)

    correct = total = 0
    predictions = {}
    half = synth.STRIDE / synth.FPS / 2
    for v, xv, yv in zip(layout, xt, yt, strict=True):
        scores = np.hstack([(xv - mu) / sd, np.ones((len(xv), 1))]) @ weights
        labels = scores.argmax(1)
        correct += int((labels == yv).sum())
        total += len(yv)
        centres = synth.snippet_centres(len(xv))
        cuts = np.flatnonzero(np.diff(labels)) + 1
        segs, conf, cls = [], [], []
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(labels)], strict=True):
            k = labels[lo]
            if k < synth.TINY_CLASS_COUNT:
                segs.append([max(centres[lo] - half, 0.0), centres[hi - 1] + half])
                conf.append(scores[lo:hi, k].mean())
                cls.append(k)
        predictions[v.video_id] = Detections(np.reshape(segs, (-1, 2)), conf, cls)
    ground_truth = {v.video_id: v for v in layout}
    result = evaluate_detection(ground_truth, predictions, list(synth.TINY_CLASSES), TIOU)
    return correct / total, result.average_mAP, layout


def test_tiny_is_learnable_and_difficulty_makes_it_harder() -> None:
    acc0, map0, _ = _probe(0.0)
    acc1, map1, layout = _probe(1.0)
    acc2, map2, _ = _probe(2.0)
    # Background alone is ~60% of the snippets: the probe must do far better than that.
    assert acc1 >= 0.85
    assert map1 >= 0.5
    assert acc0 >= acc1 + 0.01 and acc1 >= acc2 + 0.02
    assert map0 > map1 > map2

    # A prior that ignores the features stays far below on the same test videos.
    train = synth.draw_layout("tiny", videos=40, seed=0, subsets=["validation"])
    prior = PriorBaseline.fit(train, synth.TINY_CLASSES)
    ground_truth = {v.video_id: v for v in layout}
    predictions = {v.video_id: prior.predict(v.duration) for v in layout}
    baseline = evaluate_detection(ground_truth, predictions, list(synth.TINY_CLASSES), TIOU)
    assert baseline.average_mAP < 0.1


# --------------------------------------------------------------------------------------------
# Bad input on the command line
# --------------------------------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_main("amnet.cli.synth", *args)


def _layout_file(tmp_path: Path) -> Path:
    path = tmp_path / "layout.json"
    db = {
        "v1": {
            "subset": "Validation",
            "duration": 20.0,
            "fps": 30.0,
            "annotations": [{"label": "A", "segment": [1.0, 3.0], "label_id": 0}],
        }
    }
    path.write_text(json.dumps({"database": db}))
    return path


@pytest.mark.parametrize(
    "case",
    [
        "malformed-layout",
        "empty-subset",
        "unknown-preset",
        "zero-videos",
        "zero-dim",
        "negative-difficulty",
        "layout-and-preset",
        "not-a-number",
        "out-is-a-file",
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    out = tmp_path / "out"
    args = ["--out", str(out)]
    if case == "malformed-layout":
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        args += ["--layout", str(bad)]
    elif case == "empty-subset":
        args += ["--layout", str(_layout_file(tmp_path)), "--subset", "test"]
    elif case == "unknown-preset":
        args += ["--preset", "huge"]
    elif case == "zero-videos":
        args += ["--preset", "tiny", "--videos", "0"]
    elif case == "zero-dim":
        args += ["--preset", "tiny", "--dim", "0"]
    elif case == "negative-difficulty":
        args += ["--preset", "tiny", "--difficulty", "-1"]
    elif case == "layout-and-preset":
        args += ["--layout", str(_layout_file(tmp_path)), "--preset", "tiny"]
    elif case == "not-a-number":
        args += ["--preset", "tiny", "--videos", "many"]
    elif case == "out-is-a-file":
        out.write_text("keep me")
    proc = _run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amnet-synth: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    if case == "out-is-a-file":
        assert out.read_text() == "keep me"
    else:
        assert not out.exists()


def test_layout_subset_is_case_insensitive(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--layout", str(_layout_file(tmp_path)), "--subset", "VALIDATION", "--dim", "8"]
    assert synth_main([*argv, "-q", "--out", str(out)]) == 0
    videos = load_annotations(out / "annotations.json")
    assert list(videos) == ["v1"] and videos["v1"].labels == ["A"]
    assert np.load(out / "features" / "v1.npy").shape == (150, 8)
