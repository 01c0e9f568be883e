"""The seed's ablation tables (width D; AME layers × heads) on the training benchmark.

    python scripts/ablate.py [--configs dim_128,...] [--seeds 0,1] [--epochs 35] [--crop 288]
        [--set SECTION.KEY=VALUE ...] [--data DIR] [--work DIR] [--out TABLE.md]

A preset of ``benchmarks/bench_train.py`` (``--preset ablations``): every config of
``configs/ablations/`` trains with its own recipe, the paper's (AdamW lr 1e-4, 5 warm-up epochs
then cosine, wd 0.05, clip 1.0, EMA), on the benchmark's THUMOS14-shaped set; anything scaled
for a CPU is an explicit flag and is printed in the table header. Rows are in the seed's format
(mAP@0.5, mAP@0.7, average over tIoU 0.3:0.7, training time, inference time over the test
split), means over the seeds given; per-run results stay in WORK/results.json, so an
interrupted run restarts where it stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "dim_128": "D=128",
    "dim_256": "D=256",
    "dim_512": "D=512",
    "dim_1024": "D=1024",
    "layers1_heads2": "1 layer, 2 heads",
    "layers1_heads4": "1 layer, 4 heads",
    "layers2_heads4": "2 layers, 4 heads",
    "layers2_heads8": "2 layers, 8 heads",
}


def _bench_train():
    spec = importlib.util.spec_from_file_location(
        "bench_train", ROOT / "benchmarks" / "bench_train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--configs", default=",".join(LABELS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--crop", "--max-seq-len", type=int, default=288, dest="crop")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--data")
    p.add_argument("--work", default="work/bench_train", help="shared with bench_train.py")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args(argv)
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in LABELS]
    if unknown:
        print(
            f"ablate: error: unknown ablation(s) {unknown}; known: {list(LABELS)}", file=sys.stderr
        )
        return 2
    bench = _bench_train()
    # An ablation identical to the paper's config (D=512; 2 layers x 4 heads) shares its runs
    # with the paper benchmark instead of training the same model again.
    paper = bench.load_config(bench.config_path("thumos14_i3d"))
    run_name = {
        name: "thumos14_i3d" if bench.load_config(bench.config_path(name)) == paper else name
        for name in wanted
    }
    forwarded = ["--configs", ",".join(dict.fromkeys(run_name.values())), "--seeds", args.seeds, "--epochs", str(args.epochs),
                 "--crop", str(args.crop), "--work", args.work]  # fmt: skip
    for assignment in args.set:
        forwarded += ["--set", assignment]
    if args.data:
        forwarded += ["--data", args.data]
    if args.device:
        forwarded += ["--device", args.device]
    code = bench.main(forwarded)
    if code:
        return code
    import json

    stored = json.loads((Path(args.work) / "results.json").read_text())
    seeds = {int(s) for s in args.seeds.split(",") if s.strip()}
    lines = [
        f"command: `python scripts/ablate.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"device: {stored['device']}; epochs {args.epochs}; crop (max_seq_len) {args.crop}; "
        f"overrides: {', '.join(args.set) or 'none'}; seeds {args.seeds} (means)",
        "",
        "| config | mAP@0.5 | mAP@0.7 | avg | avg (raw weights) | train | inference (test set) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in wanted:
        runs = [r for r in stored["runs"] if r["config"] == run_name[name] and r["seed"] in seeds]

        def mean(key, runs=runs):
            return statistics.mean(key(r) for r in runs)

        lines.append(
            f"| {LABELS[name]} | {mean(lambda r: r['ema']['config']['map50']):.1f} "
            f"| {mean(lambda r: r['ema']['config']['map70']):.1f} "
            f"| {mean(lambda r: r['ema']['config']['avg']):.1f} "
            f"| {mean(lambda r: r['raw']['config']['avg']):.1f} "
            f"| {bench.minutes(mean(lambda r: r['train_s']))} "
            f"| {mean(lambda r: r['infer_s_ema']):.2f} s |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        from amnet.fileio import atomic_write_text

        atomic_write_text(args.out, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
