"""A class-agnostic localizer with video-level classes against a multi-class model.

The ActivityNet protocol trains AMNet with one class and takes each video's classes from a
video classifier (amnet.class_scores). This trains, per seed and on the same data, the config
as it is (multi-class) and with ``dataset.num_classes: 1``, then reports the test split's
average mAP of:

- the multi-class model;
- the one-class model, class-agnostic (every action one class: how well actions are found);
- the one-class model fused with a classifier, for top-1 and top-2 classes per video. The
  classifiers are drawn from the ground truth: ``oracle`` gives a video's own classes equal
  probability; ``noisy-X`` mixes that with a random distribution (weight X on the random part),
  so the right class is not always first.

    python benchmarks/bench_class_fusion.py --data work/tiny_data --config configs/tiny_cpu.yaml \
        --seeds 0,1 --epochs 12 --out work/bench_fusion [--json]

The data: ``amnet-synth --out work/tiny_data --preset tiny --seed 0``. Prints a markdown
table (mean over seeds, and each seed).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from amnet.annotations import build_label_map, load_annotations
from amnet.checkpoint import load_model
from amnet.class_scores import ClassScores
from amnet.config import load_config
from amnet.data import VideoFeatureDataset, make_dataset
from amnet.evaluation import evaluate_model
from amnet.train import train


def classifier(videos: dict, names: list[str], noise: float, seed: int) -> ClassScores:
    rng = np.random.default_rng(seed)
    scores = {}
    for vid, video in videos.items():
        p = np.zeros(len(names))
        for label in video.labels:
            p[names.index(label)] = 1.0
        p = p / max(p.sum(), 1.0)
        scores[vid] = (1 - noise) * p + noise * rng.dirichlet(np.ones(len(names)))
    return ClassScores(names, scores, f"noisy-{noise}" if noise else "oracle")


def evaluate(
    rows: dict[str, list[float]],
    videos: str,
    classes: str,
    model: torch.nn.Module,
    dataset: VideoFeatureDataset,
    cfg: dict,
    every: dict,
    names: list[str],
    noises: list[float],
    seed: int,
) -> None:
    """Add this model's rows (average mAP in %) for one set of test videos."""
    cpu = torch.device("cpu")
    where = f"{len(dataset)} {'test' if videos == 'all' else 'single-class test'} videos"
    if classes == "multi":
        _, result = evaluate_model(model, dataset, cfg, cpu, progress=False)
        rows.setdefault(f"{where}: multi-class model", []).append(100 * result.average_mAP)
        return
    _, result = evaluate_model(model, dataset, cfg, cpu, progress=False)
    rows.setdefault(f"{where}: one class, class-agnostic", []).append(100 * result.average_mAP)
    for noise in noises:
        scores = classifier(every, names, noise, seed)
        for topk in (1, 2):
            _, result = evaluate_model(
                model, dataset, cfg, cpu, progress=False, class_scores=scores, topk=topk
            )
            key = f"{where}: one class + {scores.path} classifier, top-{topk}"
            rows.setdefault(key, []).append(100 * result.average_mAP)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a dataset folder (amnet-synth --preset tiny)")
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=None, help="default: the config's")
    p.add_argument("--noise", default="0.5", help="comma-separated noisy-classifier weights")
    p.add_argument("--out", required=True, help="folder for the runs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    ann = data / "annotations.json"
    every = load_annotations(ann)
    names = build_label_map(every.values(), ann)
    noises = [0.0] + [float(v) for v in args.noise.split(",") if v.strip()]

    rows: dict[str, list[float]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for classes in ("multi", "one"):
            cfg = load_config(args.config)
            if classes == "one":
                cfg["dataset"]["num_classes"] = 1
            run = out / f"{classes}-seed{seed}"
            if not (run / "last.pt").exists():
                train(cfg, data, run, epochs=args.epochs, seed=seed, progress=False)
            model, run_cfg, run_names = load_model(run / "last.pt")
            run_cfg = copy.deepcopy(run_cfg)
            run_cfg["dataset"]["val_split"] = ["test"]
            for videos in ("all", "single"):
                dataset = make_dataset(run_cfg, data, "val_split", False, run_names)
                if videos == "single":
                    # ActivityNet-like: the test videos whose actions are all of one class.
                    dataset.videos = [v for v in dataset.videos if len(set(v.labels)) == 1]
                evaluate(rows, videos, classes, model, dataset, run_cfg, every, names, noises, seed)
            print(f"seed {seed}: {classes}-class model done", flush=True)

    print()
    print("| model | avg mAP, mean | per seed |")
    print("| --- | --- | --- |")
    for key, values in rows.items():
        each = " / ".join(f"{v:.2f}" for v in values)
        print(f"| {key} | {statistics.mean(values):.2f} | {each} |")
    if args.json:
        print(json.dumps({"config": args.config, "seeds": args.seeds, "rows": rows}))
    return 0


if __name__ == "__main__":
    from amnet.cli.common import run_cli

    raise SystemExit(run_cli(main, None, "bench_class_fusion"))
