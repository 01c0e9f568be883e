"""Training benchmark: train configs × seeds on one THUMOS14-shaped synthetic set, report mAP.

    python benchmarks/bench_train.py [--configs thumos14_i3d,...] [--seeds 0,1,2] [--epochs 35]
        [--crop 288] [--set model.offset_activation=relu ...] [--preset ablations]
        [--data DIR] [--work DIR] [--out-json FILE] [--out-md FILE]

The set (made on first use under ``--work``, unless ``--data`` names one): ``amnet-synth
--layout thumos14 --videos 48 --spread``, i.e. 48 ``validation`` videos to train on and 48
``test`` videos to evaluate, evenly spaced over the real layout's ids so every class appears.
Each run trains from scratch with the config's own recipe (the paper's: AdamW lr 1e-4, wd 0.05,
5 warm-up epochs then cosine, clip 1.0, EMA); ``--crop`` sets ``dataset.max_seq_len`` (training
crops and inference windows), ``--epochs`` the schedule length; other overrides are explicit
``--set`` flags. Every override is printed in the table header.

For the final weights, both EMA and raw, the test split is run once through the model and the
raw outputs go through every post-processing variant (``--postprocess``): the table reports the
config's own post-processing, the JSON all variants. Results are kept per (config, seed) in the
JSON as soon as a run ends, so a killed benchmark restarts where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from amnet.checkpoint import load_model
from amnet.config import load_config
from amnet.data import make_dataset
from amnet.errors import AMNetError
from amnet.fileio import atomic_write_json, atomic_write_text
from amnet.inference import postprocess_config, predict_chunks
from amnet.metrics import evaluate_detection
from amnet.postprocess import postprocess_chunks
from amnet.train import train

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "paper": ["thumos14_i3d"],
    # The seed's Table 1 (width) and Table 2 (AME layers x heads); D=512 and 2x4 are the paper's
    # own configuration, the same model as thumos14_i3d.
    "ablations": [
        "dim_128", "dim_256", "dim_512", "dim_1024",
        "layers1_heads2", "layers1_heads4", "layers2_heads4", "layers2_heads8",
    ],
}  # fmt: skip
# Post-processing variants measured on the same raw outputs (test_cfg overrides).
POSTPROCESS_VARIANTS: dict[str, dict[str, Any]] = {
    "vote_score": {"voting_thresh": 0.7, "voting_weight": "score"},
    "vote_score_tiou": {"voting_thresh": 0.7, "voting_weight": "score_tiou"},
    "no_vote": {"voting_thresh": 0.0},
}

log = logging.getLogger("bench_train")


def config_path(name: str) -> Path:
    """A config file: a path, or a name under configs/ or configs/ablations/."""
    for candidate in (Path(name), ROOT / "configs" / f"{name}.yaml",
                      ROOT / "configs" / "ablations" / f"{name}.yaml"):  # fmt: skip
        if candidate.is_file():
            return candidate
    raise AMNetError(
        f"unknown config {name!r} (a file, or a name in configs/ or configs/ablations/)"
    )


def apply_override(cfg: dict[str, Any], assignment: str) -> None:
    """``section.key=value`` with a YAML value; the key must exist."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise AMNetError(f"--set {assignment!r}: expected section.key=value")
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise AMNetError(f"--set {assignment!r}: no config section {part!r}")
        node = node[part]
    if parts[-1] not in node:
        raise AMNetError(f"--set {assignment!r}: unknown config key {key!r}")
    node[parts[-1]] = yaml.safe_load(raw)


def ensure_data(data: Path) -> Path:
    if (data / "annotations.json").is_file():
        return data
    from amnet.cli.synth import main as synth_main

    log.warning("writing the benchmark set to %s", data)
    code = synth_main(["--out", str(data), "--layout", "thumos14", "--videos", "48", "--spread",
                       "--seed", "0", "--quiet"])  # fmt: skip
    if code:
        raise AMNetError(f"amnet-synth failed with status {code}")
    return data


def describe_data(data: Path) -> str:
    """The table's account of the set: its folder and video count per subset."""
    database = json.loads((data / "annotations.json").read_text())["database"]
    counts: dict[str, int] = {}
    for video in database.values():
        counts[video.get("subset", "?")] = counts.get(video.get("subset", "?"), 0) + 1
    return f"{data.name}, " + " + ".join(f"{n} {subset}" for subset, n in sorted(counts.items()))


def evaluate_weights(model, cfg, dataset, device: str) -> tuple[dict[str, Any], float]:
    """mAP of every post-processing variant from one pass over the test split, and the seconds
    taken by the pass with the config's own post-processing."""
    data = cfg["dataset"]
    base = postprocess_config(cfg)
    gt = {v.video_id: v for v in dataset.videos}
    variants = {"config": base}
    for name, values in POSTPROCESS_VARIANTS.items():
        variants[name] = type(base).from_dict({**vars(base), **values})
    detections: dict[str, dict] = {name: {} for name in variants}
    started = time.perf_counter()
    spent_on_variants = 0.0
    for i in range(len(dataset)):
        item = dataset[i]
        chunks = predict_chunks(model, item["feats"].numpy(), data["max_seq_len"],
                                cfg["test_cfg"]["chunk_overlap"], device)  # fmt: skip
        for name, post in variants.items():
            t0 = time.perf_counter()
            detections[name][item["video_id"]] = postprocess_chunks(
                chunks, item["duration"], item["fps"], data["feature_stride"],
                data["num_frames"], post,
            )  # fmt: skip
            if name != "config":
                spent_on_variants += time.perf_counter() - t0
    seconds = time.perf_counter() - started - spent_on_variants
    out = {}
    for name, dets in detections.items():
        result = evaluate_detection(
            gt, dets, dataset.class_names, cfg["test_cfg"]["tiou_thresholds"]
        )
        thresholds = [round(t, 2) for t in result.tiou_thresholds]
        out[name] = {
            "avg": 100 * result.average_mAP,
            "map50": 100 * result.mAP[thresholds.index(0.5)] if 0.5 in thresholds else None,
            "map70": 100 * result.mAP[thresholds.index(0.7)] if 0.7 in thresholds else None,
        }
    return out, seconds


def run_one(name: str, seed: int, args: argparse.Namespace, data: Path, work: Path) -> dict:
    cfg = load_config(config_path(name))
    cfg["dataset"]["max_seq_len"] = args.crop
    for assignment in args.set:
        apply_override(cfg, assignment)
    cfg["train_cfg"]["eval_every"] = 0
    # No validation inside training: the benchmark scores the final weights itself, once.
    train_cfg = copy.deepcopy(cfg)
    train_cfg["dataset"]["val_split"] = []
    run = work / "runs" / f"{Path(name).stem}-seed{seed}"
    started = time.perf_counter()
    # A run folder without a result in the JSON is an interrupted run: start it again.
    train(train_cfg, data, run, epochs=args.epochs, seed=seed, device=args.device,
          progress=args.progress, overwrite=True)  # fmt: skip
    train_s = time.perf_counter() - started
    result: dict[str, Any] = {"config": name, "seed": seed, "train_s": train_s}
    for weights, use_ema in (("ema", True), ("raw", False)):
        model, mcfg, names = load_model(run / "last.pt", use_ema=use_ema)
        mcfg["dataset"]["val_split"] = cfg["dataset"]["val_split"]
        test_set = make_dataset(mcfg, data, "val_split", training=False, class_names=names)
        scores, infer_s = evaluate_weights(model.to(args.device), mcfg, test_set, args.device)
        result[weights] = scores
        result[f"infer_s_{weights}"] = infer_s
    return result


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m {seconds % 60:02.0f}s"


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (min {min(values):.1f})"


def render(results: list[dict], header: list[str]) -> str:
    lines = [*header, "",
             "| config | seed | avg (EMA) | @0.5 | @0.7 | avg (raw) | train | inference (48 videos) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in results:
        e, w = r["ema"]["config"], r["raw"]["config"]
        lines.append(
            f"| {r['config']} | {r['seed']} | {e['avg']:.1f} | {e['map50']:.1f} | {e['map70']:.1f} "
            f"| {w['avg']:.1f} | {minutes(r['train_s'])} | {r['infer_s_ema']:.1f} s |"
        )
    lines += ["", "Mean ± sample std over seeds (min), average mAP 0.3:0.7 in percent:", "",
              "| config | seeds | EMA | raw | " + " | ".join(f"EMA {v}" for v in POSTPROCESS_VARIANTS) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---" for _ in POSTPROCESS_VARIANTS) + " |"]  # fmt: skip
    for name in dict.fromkeys(r["config"] for r in results):
        rows = [r for r in results if r["config"] == name]
        cells = [spread([r["ema"]["config"]["avg"] for r in rows]),
                 spread([r["raw"]["config"]["avg"] for r in rows])]  # fmt: skip
        cells += [spread([r["ema"][v]["avg"] for r in rows]) for v in POSTPROCESS_VARIANTS]
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--configs", help="comma-separated config names or files (default: the preset's)"
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=35)
    p.add_argument("--crop", type=int, default=288, help="dataset.max_seq_len (multiple of 32)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override, recorded in the table (repeatable)")  # fmt: skip
    p.add_argument("--data", help="dataset folder (default: made under --work on first use)")
    p.add_argument("--work", default="work/bench_train")
    p.add_argument(
        "--out-json", help="per-run results (default: WORK/results.json); reused to resume"
    )
    p.add_argument("--out-md", help="also write the markdown tables here")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")  # fmt: skip
    p.add_argument("--progress", action="store_true", help="tqdm bars for each epoch")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        names = [
            c.strip()
            for c in (args.configs or ",".join(PRESETS[args.preset])).split(",")
            if c.strip()
        ]
        for name in names:
            config_path(name)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        data = ensure_data(Path(args.data) if args.data else work / "data")
        out_json = Path(args.out_json) if args.out_json else work / "results.json"
        settings = {"epochs": args.epochs, "crop": args.crop, "set": args.set, "data": str(data)}
        stored = json.loads(out_json.read_text()) if out_json.is_file() else {}
        if stored and stored.get("settings") != settings:
            raise AMNetError(f"{out_json} holds runs of other settings {stored.get('settings')}; "
                             "use another --out-json")  # fmt: skip
        results: list[dict] = stored.get("runs", [])
        device = (torch.cuda.get_device_name() if args.device == "cuda"
                  else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")  # fmt: skip
        for name in names:
            for seed in seeds:
                if any(r["config"] == name and r["seed"] == seed for r in results):
                    continue
                r = run_one(name, seed, args, data, work)
                results.append(r)
                atomic_write_json(
                    out_json, {"settings": settings, "device": device, "runs": results}, indent=1
                )
                e = r["ema"]["config"]
                print(f"{name} seed {seed}: EMA avg {e['avg']:.1f} @0.5 {e['map50']:.1f} @0.7 "
                      f"{e['map70']:.1f}, raw avg {r['raw']['config']['avg']:.1f}, "
                      f"train {minutes(r['train_s'])}", flush=True)  # fmt: skip
    except AMNetError as exc:
        print(f"bench_train: error: {exc}", file=sys.stderr)
        return 2
    wanted = [r for r in results if r["config"] in names and r["seed"] in seeds]
    header = [
        f"command: `python benchmarks/bench_train.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"device: {device}; epochs {args.epochs}; crop (max_seq_len) {args.crop}; "
        f"overrides: {', '.join(args.set) or 'none'}; data: {describe_data(data)} videos",
    ]
    table = render(wanted, header)
    print("\n" + table)
    if args.out_md:
        atomic_write_text(args.out_md, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
