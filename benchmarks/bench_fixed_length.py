"""Fixed-length features (``dataset.force_upsampling``) against windows of the videos' own length.

ActivityNet's convention resamples every video to ``max_seq_len`` snippets. This trains, per
seed and on the same data, the config as it is and with ``force_upsampling`` at each of
``--lengths``, and reports the test split's average mAP and the inference seconds of the
evaluation (the same videos, post-processing and metric).

    python benchmarks/bench_fixed_length.py --data work/tiny_data --config configs/tiny_cpu.yaml \
        --seeds 0,1,2 --lengths 256,128 --out work/bench_fixed [--json]

The data: ``amnet-synth --out work/tiny_data --preset tiny --seed 0``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from amnet.checkpoint import load_model
from amnet.config import load_config
from amnet.data import make_dataset
from amnet.evaluation import evaluate_model
from amnet.train import train


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a dataset folder (amnet-synth --preset tiny)")
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lengths", default="256,128", help="force_upsampling lengths to compare")
    p.add_argument("--epochs", type=int, default=None, help="default: the config's")
    p.add_argument("--out", required=True, help="folder for the runs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    variants = [None] + [int(v) for v in args.lengths.split(",") if v.strip()]
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for length in variants:
            cfg = load_config(args.config)
            name = "own length" if length is None else f"resampled to {length}"
            if length is not None:
                cfg["dataset"].update(force_upsampling=True, max_seq_len=length)
            run = out / f"{'own' if length is None else length}-seed{seed}"
            if not (run / "last.pt").exists():
                train(cfg, data, run, epochs=args.epochs, seed=seed, progress=False)
            model, run_cfg, names = load_model(run / "last.pt")
            run_cfg["dataset"]["val_split"] = ["test"]
            dataset = make_dataset(run_cfg, data, "val_split", False, names)
            began = time.perf_counter()
            _, result = evaluate_model(model, dataset, run_cfg, torch.device("cpu"), progress=False)
            seconds = time.perf_counter() - began
            row = rows.setdefault(name, {"average_mAP": [], "seconds": []})
            row["average_mAP"].append(100 * result.average_mAP)
            row["seconds"].append(seconds)
            print(f"seed {seed}, {name}: {100 * result.average_mAP:.2f}", flush=True)

    print()
    print("| features | avg mAP, mean | per seed | evaluation s, mean |")
    print("| --- | --- | --- | --- |")
    for name, row in rows.items():
        each = " / ".join(f"{v:.2f}" for v in row["average_mAP"])
        print(f"| {name} | {statistics.mean(row['average_mAP']):.2f} | {each} | "
              f"{statistics.mean(row['seconds']):.2f} |")  # fmt: skip
    if args.json:
        print(json.dumps({"config": args.config, "seeds": args.seeds, "rows": rows}))
    return 0


if __name__ == "__main__":
    from amnet.cli.common import run_cli

    raise SystemExit(run_cli(main, None, "bench_fixed_length"))
