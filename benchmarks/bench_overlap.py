"""How much chunk overlap a trained model needs: average mAP and inference time per overlap.

Videos longer than ``max_seq_len`` run in overlapping windows (DESIGN §6.3); the overlap is
recomputed work. This evaluates one trained checkpoint on a test split with several overlaps,
side by side in one run (the same model, videos and post-processing; only
``test_cfg.chunk_overlap`` changes), and reports average mAP, the number of windows and the
seconds of inference + post-processing.

    python benchmarks/bench_overlap.py --ckpt work/bench_train/runs/thumos14_i3d-seed0/last.pt \
        --data work/bench_data --overlaps 0.25,0.125,0.0625,0 [--max-seq-len 2304]

``--max-seq-len`` shortens the windows (a multiple of the pyramid's stride) so that a set of
short videos still exercises the chunked path. Prints a markdown table; ``--json`` adds a JSON
line.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from amnet.checkpoint import load_model
from amnet.data import make_dataset
from amnet.evaluation import evaluate_model
from amnet.postprocess import plan_chunks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a trained checkpoint")
    p.add_argument("--data", required=True, help="the dataset folder it was trained on")
    p.add_argument("--subset", default="test", help="the split to evaluate (default: test)")
    p.add_argument("--overlaps", default="0.25,0.125,0.0625,0", help="comma-separated, in [0, 1)")
    p.add_argument("--max-seq-len", type=int, default=None, help="window length (default: config)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    overlaps = [float(v) for v in args.overlaps.split(",") if v.strip()]

    model, cfg, names = load_model(args.ckpt)
    cfg["dataset"]["val_split"] = [args.subset]
    if args.max_seq_len:
        cfg["dataset"]["max_seq_len"] = int(args.max_seq_len)
    dataset = make_dataset(cfg, args.data, "val_split", False, names)
    lengths = [int(dataset[i]["feats"].shape[0]) for i in range(len(dataset))]
    torch.set_grad_enabled(False)
    rows = []
    for overlap in overlaps:
        run_cfg = copy.deepcopy(cfg)
        run_cfg["test_cfg"]["chunk_overlap"] = overlap
        windows = sum(len(plan_chunks(t, cfg["dataset"]["max_seq_len"], overlap)) for t in lengths)
        began = time.perf_counter()
        _, result = evaluate_model(model, dataset, run_cfg, torch.device("cpu"), progress=False)
        seconds = time.perf_counter() - began
        rows.append(
            {
                "overlap": overlap,
                "windows": windows,
                "seconds": seconds,
                "average_mAP": 100 * result.average_mAP,
                "mAP": [100 * m for m in result.mAP],
            }
        )
        print(f"overlap {overlap}: avg mAP {rows[-1]['average_mAP']:.2f}, {windows} windows, "
              f"{seconds:.1f} s", flush=True)  # fmt: skip

    print()
    print(
        f"{len(dataset)} videos, {sum(lengths)} snippets, max_seq_len {cfg['dataset']['max_seq_len']}"
    )
    print()
    print("| overlap | windows | seconds | avg mAP | Δ vs first |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        delta = row["average_mAP"] - rows[0]["average_mAP"]
        print(f"| {row['overlap']} | {row['windows']} | {row['seconds']:.1f} | "
              f"{row['average_mAP']:.2f} | {delta:+.2f} |")  # fmt: skip
    if args.json:
        print(json.dumps({"videos": len(dataset), "rows": rows}))
    return 0


if __name__ == "__main__":
    from amnet.cli.common import run_cli

    raise SystemExit(run_cli(main, None, "bench_overlap"))
