"""Chunk-by-chunk post-processing against one NMS over a whole video: mAP, agreement and time.

Long videos run in overlapping windows. The post-processing merges their candidates chunk by
chunk (:mod:`amnet.chunk_merge`, DESIGN §6.5) so that a stream gives the same detections as the
whole video; it clips each chunk's segments to the time the chunk saw and settles candidates
that end before the next chunk. This measures what that costs against the plain definition (all
chunks' candidates, clipped to the video only, through one NMS), on the same raw model outputs
of a trained checkpoint:

    python benchmarks/bench_chunk_merge.py --ckpt work/bench_train/runs/thumos14_i3d-seed0/last.pt \
        --data work/bench_data [--max-seq-len 288]

Prints a markdown table (average mAP, videos whose detections are identical, seconds of
post-processing); ``--json`` adds a JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from amnet.checkpoint import load_model
from amnet.data import make_dataset
from amnet.detections import Detections
from amnet.inference import postprocess_config, predict_chunks
from amnet.metrics import evaluate_detection
from amnet.postprocess import PostprocessConfig, nms, postprocess_chunks, select_candidates
from amnet.timebase import snippets_to_seconds


def one_nms(chunks, duration, fps, stride, frames, cfg: PostprocessConfig) -> Detections:
    """The plain definition: every chunk's candidates, clipped to the video, one NMS."""
    parts = []
    for scores, segments, offset, *_ in chunks:
        cand = select_candidates(scores, segments, cfg)
        segs = snippets_to_seconds(cand.segments + float(offset), fps, stride, frames)
        np.clip(segs, 0.0, duration, out=segs)
        keep = (segs[:, 1] - segs[:, 0]) >= cfg.min_duration
        parts.append(Detections(segs[keep], cand.scores[keep], cand.labels[keep]))
    return nms(Detections.concatenate(parts), cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a trained checkpoint")
    p.add_argument("--data", required=True, help="the dataset folder it was trained on")
    p.add_argument("--subset", default="test", help="the split to evaluate (default: test)")
    p.add_argument("--max-seq-len", type=int, default=None, help="window length (default: config)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    model, cfg, names = load_model(args.ckpt)
    cfg["dataset"]["val_split"] = [args.subset]
    if args.max_seq_len:
        cfg["dataset"]["max_seq_len"] = int(args.max_seq_len)
    data = cfg["dataset"]
    dataset = make_dataset(cfg, args.data, "val_split", False, names)
    post = postprocess_config(cfg)
    torch.set_grad_enabled(False)
    model.eval()

    methods = {"one NMS per video": one_nms, "chunk by chunk": postprocess_chunks}
    found: dict[str, dict[str, Detections]] = {m: {} for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    windows = 0
    for i in range(len(dataset)):
        item = dataset[i]
        chunks = predict_chunks(
            model, item["feats"].numpy(), data["max_seq_len"], cfg["test_cfg"]["chunk_overlap"]
        )
        windows += len(chunks)
        for name, method in methods.items():
            began = time.perf_counter()
            found[name][item["video_id"]] = method(
                chunks, item["duration"], item["fps"], data["feature_stride"],
                data["num_frames"], post,
            )  # fmt: skip
            seconds[name] += time.perf_counter() - began

    gt = {v.video_id: v for v in dataset.videos}
    rows = []
    for name in methods:
        result = evaluate_detection(gt, found[name], names, cfg["test_cfg"]["tiou_thresholds"])
        rows.append({"method": name, "average_mAP": 100 * result.average_mAP,
                     "mAP": [100 * m for m in result.mAP], "seconds": seconds[name]})  # fmt: skip
    a, b = found["one NMS per video"], found["chunk by chunk"]
    same = sum(
        len(a[v]) == len(b[v])
        and np.allclose(a[v].scores, b[v].scores, atol=1e-9)
        and np.allclose(a[v].segments, b[v].segments, atol=1e-9)
        for v in a
    )
    print(f"{len(dataset)} videos, {windows} windows, max_seq_len {data['max_seq_len']}, "
          f"identical detections in {same} videos")  # fmt: skip
    print()
    print("| post-processing | avg mAP | mAP @ tIoU 0.3 / 0.5 / 0.7 | seconds |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        m = row["mAP"]
        print(f"| {row['method']} | {row['average_mAP']:.2f} | "
              f"{m[0]:.1f} / {m[len(m) // 2]:.1f} / {m[-1]:.1f} | {row['seconds']:.1f} |")  # fmt: skip
    if args.json:
        print(json.dumps({"videos": len(dataset), "windows": windows, "identical": same,
                          "rows": rows}))  # fmt: skip
    return 0


if __name__ == "__main__":
    from amnet.cli.common import run_cli

    raise SystemExit(run_cli(main, None, "bench_chunk_merge"))
