"""Train and evaluate the seed's ablations; print the table in the seed's format.

    python scripts/ablate.py --data DIR [--epochs N] [--max-seq-len L] [--lr X] [--configs a,b,...] [--out TABLE.md]

DIR is an ``amnet-synth`` / ActionFormer folder with the config's train and test splits. Each
row trains one file of ``configs/ablations/`` from scratch (same seed), then runs inference on
the test split and reports mAP@0.5, mAP@0.7, the average over tIoU 0.3:0.7, the training time and
the inference time for the whole test split. ``--max-seq-len`` and ``--epochs`` scale the run
down for a CPU; a configuration that runs out of memory is reported as such, as in the seed.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

import torch

from amnet.checkpoint import load_model
from amnet.config import load_config
from amnet.errors import AMNetError
from amnet.fileio import atomic_write_text
from amnet.train import evaluate_model, make_dataset, train

ROOT = Path(__file__).resolve().parents[1]
SEED_TABLES = [
    ("dim_128", "D=128"),
    ("dim_256", "D=256"),
    ("dim_512", "D=512"),
    ("dim_1024", "D=1024"),
    ("layers1_heads2", "1 layer, 2 heads"),
    ("layers1_heads4", "1 layer, 4 heads"),
    ("layers2_heads4", "2 layers, 4 heads"),
    ("layers2_heads8", "2 layers, 8 heads"),
]


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m {seconds % 60:.0f}s"


def run_one(name: str, args: argparse.Namespace, work: Path) -> dict:
    cfg = load_config(ROOT / "configs" / "ablations" / f"{name}.yaml")
    if args.max_seq_len:
        cfg["dataset"]["max_seq_len"] = args.max_seq_len
    if args.lr:
        cfg["opt"]["learning_rate"] = args.lr
    cfg["train_cfg"]["eval_every"] = 0
    cfg["opt"]["warmup_epochs"] = min(cfg["opt"]["warmup_epochs"], max(args.epochs // 4, 0))
    run = work / name
    try:
        started = time.perf_counter()
        train(
            cfg,
            args.data,
            run,
            epochs=args.epochs,
            seed=args.seed,
            device=args.device,
            progress=True,
        )
        train_s = time.perf_counter() - started
        model, cfg, names = load_model(run / "last.pt")
        model.to(args.device)
        test_set = make_dataset(cfg, args.data, "val_split", training=False, class_names=names)
        started = time.perf_counter()
        _, result = evaluate_model(model, test_set, cfg, torch.device(args.device), progress=True)
        infer_s = time.perf_counter() - started
    except (torch.OutOfMemoryError, MemoryError):
        return {"oom": True}
    thresholds = [round(t, 2) for t in result.tiou_thresholds]
    return {
        "oom": False,
        "map50": result.mAP[thresholds.index(0.5)],
        "map70": result.mAP[thresholds.index(0.7)],
        "avg": result.average_mAP,
        "train_s": train_s,
        "infer_s": infer_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="override dataset.max_seq_len (a multiple of 32)",
    )
    p.add_argument("--lr", type=float, default=None, help="override opt.learning_rate (short runs)")
    p.add_argument("--configs", default=",".join(n for n, _ in SEED_TABLES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--work", default="work/ablate")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    labels = dict(SEED_TABLES)
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in labels]
    if unknown:
        print(
            f"ablate: error: unknown ablation(s) {unknown}; known: {list(labels)}", file=sys.stderr
        )
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    lines = [
        f"command: `python scripts/ablate.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"device: {device}; epochs {args.epochs}; max_seq_len {args.max_seq_len or 'config'}; "
        f"learning rate {args.lr or 'config'}; seed {args.seed}",
        "",
        "| config | mAP@0.5 | mAP@0.7 | avg | train | inference (test set) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in wanted:
        try:
            r = run_one(name, args, work)
        except AMNetError as exc:
            print(f"ablate: error: {exc}", file=sys.stderr)
            return 2
        if r["oom"]:
            lines.append(f"| {labels[name]} | out of memory | | | | |")
        else:
            lines.append(
                f"| {labels[name]} | {100 * r['map50']:.1f} | {100 * r['map70']:.1f} | {100 * r['avg']:.1f} | "
                f"{minutes(r['train_s'])} | {r['infer_s']:.2f} s |"
            )
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
