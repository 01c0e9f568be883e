"""AMNet speed and memory on this machine (PyTorch eager, reference attention on CPU).

    python benchmarks/bench_model.py train [--config configs/thumos14_i3d.yaml] [--iters 3]
    python benchmarks/bench_model.py infer [--dims 128,256,512,1024] [--length 2304]

``train``: seconds per training iteration (batch of ``loader.batch_size`` crops of
``max_seq_len`` snippets, forward + backward + AdamW step), the implied time per epoch on
THUMOS14 (200 training videos → 100 iterations at batch 2) and the process's peak resident
memory. ``infer``: snippets per second of one chunk through ``predict`` for each embedding width.
Each measurement runs in its own process so that peak memory belongs to it alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_batch(cfg: dict, batch: int, length: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(batch, length, cfg["dataset"]["input_dim"], generator=g) * 0.3
    segs, labels = [], []
    for _ in range(batch):
        starts = torch.sort(torch.randint(0, length - 40, (12,), generator=g)).values.float()
        segs.append(
            torch.stack([starts, starts + torch.randint(2, 40, (12,), generator=g)], dim=-1)
        )
        labels.append(torch.randint(0, cfg["dataset"]["num_classes"], (12,), generator=g))
    return feats, torch.full((batch,), length), segs, labels


def measure_train(config: str, iters: int, overrides: dict) -> dict:
    import torch

    from amnet.config import load_config
    from amnet.model import AMNet, AMNetLoss
    from amnet.train import parameter_groups

    torch.manual_seed(0)
    cfg = load_config(ROOT / config)
    cfg["model"].update(overrides)
    model = AMNet.from_config(cfg).train()
    criterion = AMNetLoss(model, cfg["train_cfg"]).train()
    opt = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-4)
    batch = cfg["loader"]["batch_size"]
    feats, lengths, segs, labels = synthetic_batch(cfg, batch, cfg["dataset"]["max_seq_len"])
    times = []
    for i in range(iters + 1):
        started = time.perf_counter()
        loss = criterion(model(feats, lengths), segs, labels)["final_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first iteration warms up allocators and kernels
            times.append(time.perf_counter() - started)
    per_iter = sorted(times)[len(times) // 2]
    return {
        "config": config,
        "overrides": overrides,
        "batch": batch,
        "length": cfg["dataset"]["max_seq_len"],
        "seconds_per_iter": per_iter,
        "seconds_per_epoch_thumos14": per_iter * 200 / batch,
        "peak_rss_mb": peak_rss_mb(),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def measure_infer(config: str, dim: int, length: int, repeats: int) -> dict:
    import torch

    from amnet.config import load_config
    from amnet.model import AMNet

    torch.manual_seed(0)
    cfg = load_config(ROOT / config)
    cfg["model"].update({"embd_dim": dim, "head_dim": dim})
    model = AMNet.from_config(cfg).eval()
    feats, lengths, _, _ = synthetic_batch(cfg, 1, length)
    with torch.no_grad():
        model.predict(feats, lengths)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.predict(feats, lengths)
            times.append(time.perf_counter() - started)
    best = min(times)
    return {
        "embd_dim": dim,
        "length": length,
        "seconds": best,
        "snippets_per_s": length / best,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["train", "infer"])
    p.add_argument("--config", default="configs/thumos14_i3d.yaml")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--dims", default="128,256,512,1024")
    p.add_argument("--length", type=int, default=2304)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="base", help="train: comma list of base, dim1024, heads8")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.what == "train":
            print(json.dumps(measure_train(args.config, args.iters, json.loads(args.overrides))))
        else:
            print(json.dumps(measure_infer(args.config, args.dim, args.length, args.repeats)))
        return

    import torch

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(
        f"machine: {machine}\ncommand: python benchmarks/bench_model.py {' '.join(sys.argv[1:])}\n"
    )
    if args.what == "train":
        variants = {
            "base": {},
            "dim1024": {"embd_dim": 1024, "head_dim": 1024},
            "heads8": {"n_heads": 8},
        }
        print(
            "| config | params (M) | batch × T | s / iteration | s / THUMOS14 epoch | peak RSS (MB) |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for name in args.variants.split(","):
            r = run_child(
                [
                    "train",
                    "--config",
                    args.config,
                    "--iters",
                    str(args.iters),
                    "--overrides",
                    json.dumps(variants[name]),
                ]
            )
            print(
                f"| {Path(args.config).name} {name} | {r['params_m']:.1f} | {r['batch']} × {r['length']} | "
                f"{r['seconds_per_iter']:.2f} | {r['seconds_per_epoch_thumos14']:.0f} | {r['peak_rss_mb']:.0f} |"
            )
    else:
        print("| D | T | s / chunk | snippets / s | peak RSS (MB) |")
        print("| --- | --- | --- | --- | --- |")
        for dim in [int(d) for d in args.dims.split(",")]:
            r = run_child(
                [
                    "infer",
                    "--config",
                    args.config,
                    "--dim",
                    str(dim),
                    "--length",
                    str(args.length),
                    "--repeats",
                    str(args.repeats),
                ]
            )
            print(
                f"| {dim} | {r['length']} | {r['seconds']:.3f} | {r['snippets_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()
