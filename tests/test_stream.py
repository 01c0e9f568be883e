"""Streaming detection (amnet.deploy.stream, amnet.chunk_merge): a live video fed block by block
gives the whole video's detections, with a bounded delay and bounded memory.

The model is the tiny trained one of conftest (window 256 snippets, 25 % overlap), run by real
ONNX Runtime and PyTorch.
"""

from __future__ import annotations

import importlib.util
import math
import threading

import numpy as np
import pytest
from videos import DIM, video

from amnet.chunk_merge import ChunkMerger
from amnet.deploy import Detector
from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.postprocess import PostprocessConfig, postprocess_chunks

NO_CAP = 10**6


def canonical(dets) -> tuple[np.ndarray, np.ndarray]:
    """Detections as (labels, [start, end, score]) rows in a fixed order, to compare sets."""
    rows = np.array([[d.label_id, d.start, d.end, d.score] for d in dets]).reshape(-1, 4)
    keys = np.round(rows, 4)  # backends differ in the last bits: sort on rounded values
    rows = rows[np.lexsort(keys.T[::-1])]
    return rows[:, 0], rows[:, 1:]


def assert_same_detections(a, b) -> None:
    la, va = canonical(a)
    lb, vb = canonical(b)
    assert len(la) == len(lb)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_allclose(va, vb, rtol=0, atol=1e-5)


def stream_all(detector: Detector, features: np.ndarray, sizes) -> tuple[list, list[int]]:
    """Push ``features`` in blocks of the given sizes (cycled); the detections and, for each,
    the count of snippets fed when it was emitted (flush: the total)."""
    stream = detector.stream()
    found, fed_at = [], []
    i, k = 0, 0
    while i < len(features):
        n = sizes[k % len(sizes)]
        k += 1
        out = stream.push(features[i : i + n])
        i += n
        found += out
        fed_at += [stream.fed] * len(out)
    out = stream.flush()
    return found + out, fed_at + [len(features)] * len(out)


@pytest.fixture(scope="module")
def uncapped(models) -> dict[str, Detector]:
    detectors = {
        "onnx": Detector(models["onnx"], top_k=NO_CAP, intra_op_threads=1),
        "pt": Detector(models["pt"], top_k=NO_CAP),
    }
    if importlib.util.find_spec("openvino"):
        detectors["openvino"] = Detector(
            models["onnx"], top_k=NO_CAP, intra_op_threads=1, runtime="openvino"
        )
    return detectors


# --------------------------------------------------------------------------- exactness


LENGTHS = [
    1,
    100,  # shorter than a window: one window, run at flush
    256,  # exactly one window
    640,  # the last regular window ends at the video's end (0, 192, 384)
    1000,  # the last window is aligned to the end
]


# Every window layout on ONNX Runtime. The stream's windowing and merging do not depend on the
# backend, which only runs the windows: the others take one snippet and several windows.
@pytest.mark.parametrize(
    ("backend", "length"),
    [("onnx", n) for n in LENGTHS] + [(b, n) for b in ("pt", "openvino") for n in (1, 640)],
)
def test_stream_equals_whole_video(uncapped, backend, length):
    if backend not in uncapped:
        pytest.skip("the [openvino] extra is not installed")
    detector = uncapped[backend]
    features = video(length, seed=length)
    whole = detector(features)
    for sizes in ([length], [37, 0, 5, 300], [256]):  # one snippet a push: test_delay_...
        found, _ = stream_all(detector, features, sizes)
        assert_same_detections(found, whole)


def test_stream_equals_whole_video_long(uncapped):
    detector = uncapped["onnx"]
    features = video(3000, seed=9)
    whole = detector(features)
    assert len(whole) > 50
    found, fed_at = stream_all(detector, features, [113, 0, 1, 700])
    assert_same_detections(found, whole)
    # Most detections come out before the end of the stream.
    assert sum(f < len(features) for f in fed_at) > len(found) // 2


def test_any_float_dtype_and_layout(uncapped):
    detector = uncapped["onnx"]
    features = video(500, seed=2)
    features[200:350] = features[200:350].astype(np.float16)  # the values float16 can carry
    whole = detector(features)
    stream = detector.stream()
    found = stream.push(features[:200].astype(np.float64))
    found += stream.push(np.asfortranarray(features[200:350].astype(np.float16)))
    found += stream.push(features[350:][::-1][::-1])  # a view with negative strides made twice
    found += stream.flush()
    assert_same_detections(found, whole)


# --------------------------------------------------------------------------- delay and memory


def test_delay_is_bounded(uncapped):
    detector = uncapped["onnx"]
    features = video(1500, seed=4)
    stream = detector.stream()
    assert stream.max_delay == stream.window + stream.step == 256 + 192
    stream = detector.stream()
    found, fed_at, pending = [], [], []
    for i in range(len(features)):
        out = stream.push(features[i : i + 1])
        found += out
        fed_at += [stream.fed] * len(out)
        pending.append(stream.pending)
    out = stream.flush()
    found += out
    fed_at += [len(features)] * len(out)
    assert max(pending) <= 3 * detector.postprocess.pre_nms_topk
    assert_same_detections(found, detector(features))
    per_snippet = detector.feature_stride / detector.fps
    for d, fed in zip(found, fed_at, strict=True):
        end = math.ceil(d.end / per_snippet - 1e-9)
        assert fed <= min(end + stream.max_delay, len(features))


def test_memory_is_bounded_by_the_window(models):
    # A score floor, as a production stream would have, keeps this long run quick; the bound on
    # held candidates is checked at the default settings in test_delay_is_bounded.
    detector = Detector(models["onnx"], min_score=0.03, intra_op_threads=1)
    stream = detector.stream()
    pending, emitted = [], 0
    for i in range(30):  # 30,000 snippets (156 windows), never held at once
        emitted += len(stream.push(video(1000, seed=i)))
        pending.append(stream.pending)
        assert stream._rows.shape == (stream.window + stream.step, DIM)
    emitted += len(stream.flush())
    assert stream.fed == 30_000
    cap = 3 * detector.postprocess.pre_nms_topk  # candidates of about two windows, plus anchors
    assert max(pending) <= cap
    assert emitted > 0


def test_streams_share_a_detector_across_threads(models):
    detector = Detector(models["onnx"], top_k=NO_CAP, min_score=0.01, intra_op_threads=1)
    videos = [video(600 + 97 * i, seed=20 + i) for i in range(4)]
    expected = [detector(v) for v in videos]
    results: list = [None] * len(videos)
    errors: list = []

    def worker(i: int) -> None:
        try:
            results[i] = stream_all(detector, videos[i], [50 + 13 * i])[0]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(videos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected, strict=True):
        assert_same_detections(got, want)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def whole_700(uncapped) -> tuple[np.ndarray, list]:
    """A 700-snippet video and its whole-video detections (ONNX Runtime, uncapped)."""
    features = video(700, seed=3)
    return features, uncapped["onnx"](features)


@pytest.mark.parametrize(
    "block, message",
    [
        (np.zeros((5, DIM + 1), np.float32), "channels"),
        (np.zeros(DIM, np.float32), "expected shape"),
        (np.full((3, DIM), np.nan, np.float32), "NaN"),
        (np.array([["a"] * DIM]), "dtype"),
        ("video.npy", "got a path"),
        ({"rows": 3}, "dtype object"),
    ],
)
def test_bad_blocks_leave_the_stream_unchanged(uncapped, whole_700, block, message):
    detector = uncapped["onnx"]
    features, whole = whole_700
    stream = detector.stream()
    found = stream.push(features[:300])
    with pytest.raises(AMNetError, match=message):
        stream.push(block)
    assert stream.fed == 300
    found += stream.push(features[300:]) + stream.flush()
    assert_same_detections(found, whole)


def test_a_flushed_stream_refuses_more(uncapped):
    stream = uncapped["onnx"].stream()
    assert stream.push(np.zeros((0, DIM), np.float32)) == []
    assert stream.flush() == []
    with pytest.raises(AMNetError, match="flushed"):
        stream.push(np.zeros((1, DIM), np.float32))
    with pytest.raises(AMNetError, match="flushed"):
        stream.flush()


def test_min_score_applies_to_the_stream(models):
    detector = Detector(models["onnx"], top_k=NO_CAP, min_score=0.03, intra_op_threads=1)
    features = video(900, seed=6)
    found, _ = stream_all(detector, features, [64])
    assert found and all(d.score >= 0.03 for d in found)
    assert_same_detections(found, detector(features))


# --------------------------------------------------------------------------- the merge itself

FPS, STRIDE, FRAMES = 30.0, 4, 16


def random_chunks(rng, total: int, window: int, step: int, classes: int = 3, clutter=True):
    """Model-like raw outputs for every window: clusters of candidates around a few actions,
    plus (``clutter``) low-scoring candidates that chain over the whole video."""
    actions = np.sort(rng.uniform(0, total, (max(total // 80, 1), 2)), axis=1)
    actions[:, 1] = np.minimum(actions[:, 0] + rng.uniform(3, 40, len(actions)), total)
    starts = list(range(0, total - window + 1, step))
    if starts[-1] != total - window:
        starts.append(total - window)
    chunks = []
    for s in starts:
        points = window + window // 2
        scores = (rng.uniform(0, 1, (points, classes)) ** 8) * (0.3 if clutter else 0.0)
        segs = np.sort(rng.uniform(-20, window + 20, (points, 2)), axis=1)
        for a, b in actions:
            if s <= a < s + window:
                n = 12
                rows = rng.integers(0, points, n)
                segs[rows] = np.array([a - s, b - s]) + rng.normal(0, 2, (n, 2))
                segs[rows] = np.sort(segs[rows], axis=1)
                scores[rows, rng.integers(0, classes)] = rng.uniform(0.3, 0.95, n)
        chunks.append((scores, segs, s, window))
    return chunks


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("method", ["soft", "hard"])
def test_merger_final_detections_never_change(seed, method):
    """What ``ready`` declares final is exactly what the whole video gives, at any frontier."""
    rng = np.random.default_rng(seed)
    total, window, step = int(rng.integers(700, 2000)), 256, 192
    chunks = random_chunks(rng, total, window, step)
    cfg = PostprocessConfig(nms_method=method, max_detections=NO_CAP, pre_nms_topk=300)
    duration = ((total - 1) * STRIDE + FRAMES) / FPS
    whole = postprocess_chunks(chunks, duration, FPS, STRIDE, FRAMES, cfg)

    merger = ChunkMerger(cfg, FPS, STRIDE, FRAMES)
    parts, early = [], 0
    for i, (scores, segs, offset, length) in enumerate(chunks):
        parts.append(merger.add(scores, segs, offset, length))
        following = chunks[i + 1][2] if i + 1 < len(chunks) else total
        for frontier in sorted(rng.integers(offset, following + 1, 3)):
            ready = merger.ready(int(frontier))
            early += len(ready)
            parts.append(ready)
    parts.append(merger.finish())
    got, want = rows_of(Detections.concatenate(parts)), rows_of(whole)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert early > 0


def rows_of(dets) -> np.ndarray:
    rows = np.column_stack([dets.labels, dets.segments, dets.scores])
    keys = np.round(rows, 6)  # voting may differ in the last bits: sort on rounded values
    return rows[np.lexsort(keys.T[::-1])]


@pytest.mark.parametrize("seed", range(4))
def test_without_chains_over_windows_the_merge_is_one_nms(seed):
    """With candidates only around actions (nothing chains from one window's start to the
    next), settling early changes nothing: the merge equals one NMS over every window's
    candidates, each clipped to the time its window saw - suppression and voting across
    windows included."""
    from amnet.postprocess import nms, select_candidates
    from amnet.timebase import snippets_duration, snippets_to_seconds

    rng = np.random.default_rng(seed)
    total = int(rng.integers(700, 2000))
    chunks = random_chunks(rng, total, 256, 192, clutter=False)
    cfg = PostprocessConfig(max_detections=NO_CAP)
    duration = snippets_duration(total, FPS, STRIDE, FRAMES)
    parts = []
    for scores, segs, offset, length in chunks:
        cand = select_candidates(scores, segs, cfg)
        seconds = snippets_to_seconds(cand.segments + offset, FPS, STRIDE, FRAMES)
        high = snippets_duration(offset + length, FPS, STRIDE, FRAMES)
        np.clip(seconds, offset * STRIDE / FPS, high, out=seconds)
        keep = seconds[:, 1] - seconds[:, 0] >= cfg.min_duration
        parts.append(Detections(seconds[keep], cand.scores[keep], cand.labels[keep]))
    want = nms(Detections.concatenate(parts), cfg)
    got = postprocess_chunks(chunks, duration, FPS, STRIDE, FRAMES, cfg)
    np.testing.assert_allclose(rows_of(got), rows_of(want), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_a_score_floor_changes_nothing_above_it(seed):
    """``min_score`` leaves low candidates out of the NMS (for speed): what scores above it is
    what the full merge gives."""
    rng = np.random.default_rng(seed)
    total = int(rng.integers(700, 2000))
    chunks = random_chunks(rng, total, 256, 192)
    cfg = PostprocessConfig(max_detections=NO_CAP)
    duration = ((total - 1) * STRIDE + FRAMES) / FPS
    full = postprocess_chunks(chunks, duration, FPS, STRIDE, FRAMES, cfg)
    for floor in (0.05, 0.3):
        want = full.take(np.flatnonzero(full.scores >= floor))
        got = postprocess_chunks(chunks, duration, FPS, STRIDE, FRAMES, cfg, min_score=floor)
        assert len(want) > 0
        np.testing.assert_allclose(rows_of(got), rows_of(want), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", ["soft", "hard"])
def test_a_cap_gives_the_best_of_the_uncapped_merge(seed, method):
    """``max_detections`` lets the merge stop settling a window's candidates once it has that
    many settled picks (for speed): the result is still the best of what the uncapped merge
    gives."""
    rng = np.random.default_rng(seed)
    total = int(rng.integers(1500, 3000))
    chunks = random_chunks(rng, total, 256, 192)
    duration = ((total - 1) * STRIDE + FRAMES) / FPS
    full = postprocess_chunks(
        chunks, duration, FPS, STRIDE, FRAMES,
        PostprocessConfig(nms_method=method, max_detections=NO_CAP),
    )  # fmt: skip
    for cap in (5, 40):
        cfg = PostprocessConfig(nms_method=method, max_detections=cap)
        got = postprocess_chunks(chunks, duration, FPS, STRIDE, FRAMES, cfg)
        assert len(full) > 2 * cap and len(got) == cap
        np.testing.assert_allclose(rows_of(got), rows_of(full.take(np.arange(cap))), atol=1e-9)


def test_merger_of_one_chunk_is_one_nms():
    """A video of one window: the merge is the plain NMS of its candidates (nothing settles
    early), so short videos keep the historical definition exactly."""
    from amnet.postprocess import nms, select_candidates
    from amnet.timebase import snippets_to_seconds

    rng = np.random.default_rng(1)
    (scores, segs, _, length) = random_chunks(rng, 256, 256, 192)[0]
    cfg = PostprocessConfig()
    duration = ((length - 1) * STRIDE + FRAMES) / FPS
    got = postprocess_chunks([(scores, segs, 0, length)], duration, FPS, STRIDE, FRAMES, cfg)
    cand = select_candidates(scores, segs, cfg)
    seconds = np.clip(snippets_to_seconds(cand.segments, FPS, STRIDE, FRAMES), 0, duration)
    keep = seconds[:, 1] - seconds[:, 0] >= cfg.min_duration
    want = nms(Detections(seconds[keep], cand.scores[keep], cand.labels[keep]), cfg)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.segments, want.segments)


# --------------------------------------------------------------------------- amnet-infer --stream


def _infer_script() -> str:
    import shutil
    import sys
    from pathlib import Path

    script = shutil.which("amnet-infer", path=str(Path(sys.executable).parent))
    assert script, "amnet-infer is not installed next to this interpreter"
    return script


def test_cli_stream_pipes_detections_as_they_become_final(models, uncapped):
    """A real pipe: detections come out while the producer is still writing, and all of them
    together are the whole video's."""
    import json
    import select
    import subprocess

    features = video(1500, seed=9)
    want = uncapped["onnx"](features)
    proc = subprocess.Popen(
        [_infer_script(), "--engine", str(models["onnx"]), "--stream", "--dim", str(DIM), "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # The producer writes the first 1,000 snippets (four windows) and waits for a detection
    # before the rest, so a line must come out while the input is still open. It writes from a
    # thread: the child may fill the stdout pipe while it reads.
    seen = threading.Event()

    def produce() -> None:
        proc.stdin.write(features[:1000].astype("<f4").tobytes())
        proc.stdin.flush()
        if seen.wait(120):
            proc.stdin.write(features[1000:].astype("<f4").tobytes())
        proc.stdin.close()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no detection came out while the stream was open"
        first = proc.stdout.readline()
        seen.set()
        rest, err = proc.stdout.read(), proc.stderr.read()
        assert proc.wait(timeout=120) == 0, err
    finally:
        seen.set()
        proc.kill()
        producer.join()
    lines = [json.loads(line) for line in (first + rest).decode().splitlines()]
    assert set(lines[0]) == {"label", "label_id", "segment", "score"}
    got = [
        type(
            "D",
            (),
            {
                "label_id": d["label_id"],
                "start": d["segment"][0],
                "end": d["segment"][1],
                "score": d["score"],
            },
        )
        for d in lines
    ]
    assert_same_detections(got, want)


@pytest.mark.parametrize(
    "args, data, message",
    [
        (["--dim", str(DIM)], b"\0" * (4 * DIM + 3), "inside a row"),
        (["--dim", "16"], b"\0" * 64, "model expects 2048"),
        (["--dim", str(DIM)], np.full((2, DIM), np.nan, "<f4").tobytes(), "NaN"),
        ([], b"", "needs --dim"),
        (["--dim", str(DIM), "--top-k", "5"], b"", "--top-k does not apply"),
        (["--dim", str(DIM), "--postprocess-workers", "2"], b"", "--postprocess-workers does not"),
        (["--dim", str(DIM), "--workers", "2"], b"", "--workers does not apply"),
        (["--dim", str(DIM), "--resume-from", "out.json"], b"", "--resume-from does not apply"),
        (["--dim", str(DIM), "x.npy"], b"", "give no FEATURES"),
    ],
    ids=lambda v: f"{len(v)}B" if isinstance(v, bytes) and len(v) > 40 else None,  # not the bytes
)
def test_cli_stream_bad_input(models, monkeypatch, args, data, message):
    import io
    import sys

    from clitools import run_main

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    result = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]), "--stream", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
