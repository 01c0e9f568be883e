"""Time the shared post-processing path (amnet.postprocess) on CPU.

Two measurements, median / p90 over many synthetic videos:

* ``nms``: 2,000 candidates in seconds, 20 classes, clustered around the actions of a
  THUMOS14-shaped video (DESIGN.md §7: action length log-normal(1.16, 0.83) s, one class in 75 %
  of videos), with the default soft-NMS + score voting, and with hard NMS for comparison.
* ``postprocess_chunks``: the whole path from raw model outputs (6-level pyramid, scores
  ``[P, 20]``, decoded segments) for THUMOS14-length videos, chunked like inference
  (``max_seq_len`` 2304, 25 % overlap): candidate selection, seconds, clipping, NMS, voting.

Usage: ``python benchmarks/bench_postprocess.py [--videos 300] [--seed 0]``; prints a markdown
table.

With ``--engine MODEL --features DIR``, the same path on a model's real outputs instead: the
model runs once over every ``.npy`` in DIR (its raw window outputs kept in memory), then
``postprocess_chunks`` is timed on each video, ``--rounds`` times; prints the seconds for the
folder and per-video milliseconds (``--json``: also a JSON line).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from amnet.detections import Detections
from amnet.postprocess import (
    PostprocessConfig,
    nms,
    plan_chunks,
    postprocess_chunks,
    select_candidates,
)
from amnet.timebase import snippets_duration

FPS, STRIDE, NFRAMES = 30.0, 4, 16
NUM_CLASSES = 20
MAX_SEQ_LEN = 2304
LEVEL_STRIDES = (1, 2, 4, 8, 16, 32)


def _video_actions(
    rng: np.random.Generator, duration: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Action starts, ends (seconds) and classes of one THUMOS14-like video."""
    n = max(1, int(rng.lognormal(np.log(9.0), 0.8)))
    lengths = np.minimum(rng.lognormal(1.16, 0.83, n), duration / 2)
    starts = rng.uniform(0, duration - lengths)
    classes_in_video = rng.choice(NUM_CLASSES, 1 if rng.random() < 0.75 else 3, replace=False)
    return starts, starts + lengths, rng.choice(classes_in_video, n)


def random_candidates(rng: np.random.Generator, n: int = 2000) -> Detections:
    """``n`` detector-like candidates (seconds): most jittered around true actions with the true
    class, the rest low-scoring clutter over all classes."""
    duration = float(np.clip(rng.lognormal(5.02, 0.84), 15, 1673))
    starts, ends, classes = _video_actions(rng, duration)
    n_true = int(n * 0.6)
    which = rng.integers(0, len(starts), n_true)
    length = ends[which] - starts[which]
    s = starts[which] + rng.normal(0, 0.15, n_true) * length
    e = ends[which] + rng.normal(0, 0.15, n_true) * length
    true_scores = rng.beta(2, 3, n_true)
    n_clutter = n - n_true
    c = rng.uniform(0, duration, n_clutter)
    w = rng.lognormal(1.16, 1.0, n_clutter)
    segs = np.concatenate([np.stack([s, e], 1), np.stack([c - w / 2, c + w / 2], 1)])
    scores = np.concatenate([true_scores, rng.uniform(0.001, 0.05, n_clutter)])
    labels = np.concatenate([classes[which], rng.integers(0, NUM_CLASSES, n_clutter)])
    segs = np.clip(np.sort(segs, axis=1), 0, duration)
    return Detections(segs, scores, labels)


def _pyramid_points(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres and strides (snippets) of the points of a chunk of ``length`` snippets."""
    centres, strides = [], []
    for s in LEVEL_STRIDES:
        count = -(-length // s)
        centres.append(np.arange(count) * s + (s - 1) / 2)
        strides.append(np.full(count, s))
    return np.concatenate(centres).astype(np.float64), np.concatenate(strides).astype(np.float64)


def random_model_outputs(
    rng: np.random.Generator,
) -> tuple[list[tuple[np.ndarray, np.ndarray, int]], float]:
    """Raw per-chunk outputs of one THUMOS14-length video, as a backend would hand them over."""
    duration = float(np.clip(rng.lognormal(5.02, 0.84), 15, 1673))
    num_snippets = max(1, int((duration * FPS - NFRAMES) / STRIDE) + 1)
    starts, ends, classes = _video_actions(rng, duration)
    # actions in snippet units
    a_start = (starts * FPS - NFRAMES / 2) / STRIDE
    a_end = (ends * FPS - NFRAMES / 2) / STRIDE
    centres, strides = _pyramid_points(MAX_SEQ_LEN)
    chunks = []
    for lo, hi in plan_chunks(num_snippets, MAX_SEQ_LEN, 0.25):
        valid = hi - lo
        pos = centres + lo
        # background: sigmoid of low logits, a few above the 0.001 threshold
        scores = 1 / (1 + np.exp(-rng.normal(-7.5, 1.5, (len(pos), NUM_CLASSES))))
        offsets = rng.exponential(2.0, (len(pos), 2))
        inside = (pos[:, None] >= a_start[None]) & (pos[:, None] <= a_end[None])
        point, act = np.nonzero(inside)
        # points inside an action: high score for its class, offsets toward its boundaries
        scores[point, classes[act]] = rng.beta(3, 2, len(point))
        offsets[point, 0] = (pos[point] - a_start[act]) / strides[point]
        offsets[point, 1] = (a_end[act] - pos[point]) / strides[point]
        offsets[point] *= rng.normal(1, 0.1, (len(point), 2))
        segs = np.stack(
            [centres - offsets[:, 0] * strides, centres + offsets[:, 1] * strides], axis=1
        )
        scores[centres >= valid] = 0.0  # padding past the chunk's valid length
        chunks.append((scores.astype(np.float32), segs.astype(np.float32), lo))
    return chunks, duration


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _row(name: str, times: list[float], note: str) -> str:
    t = np.asarray(times)
    return f"| {name} | {np.median(t):.2f} | {np.percentile(t, 90):.2f} | {t.max():.2f} | {note} |"


def real_outputs(engine: str, features: Path, threads: int | None) -> tuple:
    """Post-processing of one model's outputs over a folder of videos (see the docstring)."""
    from amnet.console import bar_disabled
    from amnet.deploy import Detector
    from amnet.fileio import load_features

    det = Detector(engine, intra_op_threads=threads)
    files = sorted(features.glob("*.npy"))
    videos, snippets, windows = [], 0, 0
    for path in tqdm(files, desc="model outputs", unit="video", disable=bar_disabled()):
        array = det.prepare(load_features(path, det.input_dim))
        if array.shape[0] == 0:
            continue
        duration = snippets_duration(array.shape[0], det.fps, det.feature_stride, det.num_frames)
        chunks = det.run_chunks(array)
        videos.append((chunks, duration))
        snippets, windows = snippets + array.shape[0], windows + len(chunks)
    return det, videos, snippets, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", help="a model (.onnx, .pt): time its real outputs")
    parser.add_argument("--features", type=Path, help="folder of .npy videos (with --engine)")
    parser.add_argument("--rounds", type=int, default=3, help="with --engine: timed passes")
    parser.add_argument("--threads", type=int, default=None, help="with --engine: model threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.engine:
        if args.features is None:
            parser.error("--engine needs --features")
        det, videos, snippets, windows = real_outputs(args.engine, args.features, args.threads)
        per_video, totals = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for chunks, duration in videos:
                per_video.append(
                    _timed(
                        lambda c=chunks, d=duration: postprocess_chunks(
                            c, d, det.fps, det.feature_stride, det.num_frames, det.postprocess
                        )
                    )
                )
            totals.append(time.perf_counter() - start)
        print(
            f"{len(videos)} videos, {snippets:,} snippets, {windows} windows, {args.rounds} rounds\n"
        )
        print("| measure | value |")
        print("| --- | ---: |")
        print(f"| seconds for the folder (median of rounds) | {np.median(totals):.2f} |")
        t = np.asarray(per_video)
        print(f"| ms per video: median / p90 / max | {np.median(t):.2f} / "
              f"{np.percentile(t, 90):.2f} / {t.max():.2f} |")  # fmt: skip
        if args.json:
            print(json.dumps({"videos": len(videos), "snippets": snippets, "windows": windows,
                              "seconds": totals, "ms_median": float(np.median(t)),
                              "ms_p90": float(np.percentile(t, 90))}))  # fmt: skip
        return
    rng = np.random.default_rng(args.seed)

    soft, hard = PostprocessConfig(), PostprocessConfig(nms_method="hard")
    nms_soft, nms_hard, kept = [], [], []
    for _ in range(args.videos):
        dets = random_candidates(rng)
        nms(dets, soft)  # warm caches so the first video does not skew the tail
        nms_soft.append(_timed(lambda d=dets: kept.append(len(nms(d, soft)))))
        nms_hard.append(_timed(lambda d=dets: nms(d, hard)))

    select_t, full_t, n_chunks, n_cand = [], [], [], []
    for _ in range(args.videos):
        chunks, duration = random_model_outputs(rng)
        n_chunks.append(len(chunks))
        n_cand.append(sum(len(select_candidates(s, g, soft)) for s, g, _ in chunks))
        select_t.append(_timed(lambda c=chunks: [select_candidates(s, g, soft) for s, g, _ in c]))
        full_t.append(
            _timed(
                lambda c=chunks, d=duration: postprocess_chunks(c, d, FPS, STRIDE, NFRAMES, soft)
            )
        )

    print(f"{args.videos} videos per row, {NUM_CLASSES} classes, times in ms\n")
    print("| stage | median | p90 | max | notes |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(
        _row(
            "nms, soft (σ 0.5) + voting", nms_soft, f"2,000 candidates; kept {np.median(kept):.0f}"
        )
    )
    print(_row("nms, hard (tIoU 0.1) + voting", nms_hard, "2,000 candidates"))
    print(
        _row(
            "select_candidates, all chunks",
            select_t,
            f"P = {len(_pyramid_points(MAX_SEQ_LEN)[0])} points per chunk, "
            f"{np.mean(n_chunks):.2f} chunks/video",
        )
    )
    print(
        _row(
            "postprocess_chunks (whole path)",
            full_t,
            f"median {np.median(n_cand):.0f} candidates into NMS",
        )
    )


if __name__ == "__main__":
    main()
