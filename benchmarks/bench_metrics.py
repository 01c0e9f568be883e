"""Time the detection metric on THUMOS14-test-sized input: 212 videos x 200 predictions.

    python benchmarks/bench_metrics.py [ANNOTATIONS.json] [--repeats N] [--no-reference]

Predictions are random but plausible: most lie near a ground-truth event (jittered bounds, the
right class nine times in ten, higher scores), the rest are background segments of typical
length with lower scores. The plain loop implementation of tests/test_metrics.py is timed once
for comparison, and its mAP must agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from amnet.annotations import build_label_map, load_annotations, select_subset
from amnet.detections import Detections
from amnet.layouts import layout_path
from amnet.metrics import evaluate_detection, parse_tiou

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GT = layout_path("thumos14")


def plausible_predictions(gt, class_names, per_video: int, seed: int) -> dict[str, Detections]:
    rng = np.random.default_rng(seed)
    num_classes = len(class_names)
    ids = {n: i for i, n in enumerate(class_names)}
    preds = {}
    for vid, ann in gt.items():
        segs = ann.segments
        labels = np.array([ids[name] for name in ann.labels], dtype=np.int64)
        near = int(per_video * 0.6) if len(segs) else 0
        k = rng.integers(0, max(len(segs), 1), near)
        length = segs[k, 1] - segs[k, 0] if near else np.zeros(0)
        start = segs[k, 0] + rng.normal(0, 0.2, near) * length if near else np.zeros(0)
        end = segs[k, 1] + rng.normal(0, 0.2, near) * length if near else np.zeros(0)
        cls = np.where(rng.random(near) < 0.9, labels[k], rng.integers(0, num_classes, near))
        score = rng.beta(4, 2, near)

        rest = per_video - near
        bg_len = np.exp(rng.normal(1.16, 0.83, rest))
        bg_start = rng.uniform(0, max(ann.duration - 1.0, 1.0), rest)
        video_classes = np.unique(labels) if len(labels) else np.arange(num_classes)
        bg_cls = np.where(
            rng.random(rest) < 0.8,
            rng.choice(video_classes, rest),
            rng.integers(0, num_classes, rest),
        )
        starts = np.clip(np.concatenate([start, bg_start]), 0, ann.duration)
        ends = np.clip(np.concatenate([end, bg_start + bg_len]), 0, ann.duration)
        ends = np.maximum(ends, starts)
        preds[vid] = Detections(
            np.stack([starts, ends], axis=1),
            np.concatenate([score, rng.beta(1.5, 4, rest)]),
            np.concatenate([cls, bg_cls]),
        )
    return preds


def load_reference():
    path = REPO / "tests" / "test_metrics.py"
    try:
        spec = importlib.util.spec_from_file_location("amnet_metrics_reference", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.reference_evaluate
    except (ImportError, OSError):
        return None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{cpu}, {cores} cores available, Python {platform.python_version()}, "
        f"numpy {np.__version__}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gt", nargs="?", default=str(DEFAULT_GT), help="annotation file")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--per-video", type=int, default=200)
    parser.add_argument("--tiou", default="0.3:0.7:0.1")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip the plain loop timing")
    args = parser.parse_args()

    videos = load_annotations(args.gt)
    class_names = build_label_map(videos.values(), args.gt)
    gt = select_subset(videos, args.subset, args.gt)
    preds = plausible_predictions(gt, class_names, args.per_video, args.seed)
    thresholds = parse_tiou(args.tiou)
    num_preds = sum(len(d) for d in preds.values())

    evaluate_detection(gt, preds, class_names, thresholds)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = evaluate_detection(gt, preds, class_names, thresholds)
        times.append(time.perf_counter() - t0)
    times.sort()

    rows = [
        ("evaluate_detection (vectorised), best", f"{times[0] * 1e3:.1f} ms"),
        ("evaluate_detection (vectorised), median", f"{times[len(times) // 2] * 1e3:.1f} ms"),
    ]
    reference = None if args.no_reference else load_reference()
    if reference is not None:
        t0 = time.perf_counter()
        ref_map, _ = reference(gt, preds, class_names, thresholds.tolist())
        ref_time = time.perf_counter() - t0
        agree = np.allclose(ref_map, result.mAP, rtol=0, atol=1e-9)
        rows.append(("plain loop reference, once", f"{ref_time * 1e3:.0f} ms"))
        rows.append(("speed-up", f"{ref_time / times[0]:.0f}x"))
        rows.append(("mAP agrees with the reference (1e-9)", "yes" if agree else "NO"))
        if not agree:
            print("mAP mismatch:", ref_map, result.mAP, file=sys.stderr)

    print(f"Machine: {machine()}")
    print(
        f"Input: {len(gt)} videos ({args.subset}), {num_preds} predictions, "
        f"{len(class_names)} classes, tIoU {thresholds.tolist()}, best of {args.repeats}"
    )
    print()
    print("| measure | value |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(
        "| mAP per tIoU (%) | "
        + ", ".join(f"{100 * m:.2f}" for m in result.mAP)
        + f" (avg {100 * result.average_mAP:.2f}) |"
    )
    return 0 if reference is None or agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
