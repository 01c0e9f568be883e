"""AMNet speed and memory on this machine (PyTorch eager, reference attention on CPU).

    python benchmarks/bench_model.py train [--config configs/thumos14_i3d.yaml] [--iters 3]
        [--crop SNIPPETS]
    python benchmarks/bench_model.py infer [--dims 128,256,512,1024] [--length 2304]
    python benchmarks/bench_model.py update [--config configs/thumos14_i3d.yaml] [--repeats 20]
    python benchmarks/bench_model.py flops [--config configs/thumos14_i3d.yaml] [--length 2304]
    python benchmarks/bench_model.py heads [--repeats 20] [--device cuda]

``train``: seconds per training iteration (batch of ``loader.batch_size`` crops of
``max_seq_len`` snippets, forward + backward + AdamW step), the implied time per epoch on
THUMOS14 (200 training videos → 100 iterations at batch 2) and the process's peak resident
memory. ``infer``: snippets per second of one chunk through ``predict`` for each embedding width.
``update``: the parameter updates that follow each backward pass, in the implementation
``amnet-train`` uses and in the plain per-tensor loop, interleaved (median ms): AdamW's step
(fused vs loop) and the EMA update (one multi-tensor lerp vs one lerp per tensor).
``flops``: floating-point operations of one window through ``predict`` (torch's FLOP counter:
matmuls and convolutions), per top-level module and per snippet.
``heads``: the classification and regression heads over the 6 pyramid levels, as the model
runs them (all levels joined into one sequence) and one pass per level, interleaved (median
ms), forward + backward and forward alone, for the tiny config's training batch and the paper
config's CPU crop, training crop and inference window.
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


def measure_train(
    config: str, iters: int, overrides: dict, device: str = "cpu", crop: int | None = None
) -> dict:
    """One training step as ``amnet-train`` runs it (AMP on CUDA), repeated ``iters`` times, on
    crops of ``crop`` snippets (default: the config's ``max_seq_len``)."""
    import torch

    from amnet.config import load_config
    from amnet.kernels import attention_backend
    from amnet.model import AMNet, AMNetLoss
    from amnet.train import make_optimizer

    torch.manual_seed(0)
    cfg = load_config(ROOT / config)
    cfg["model"].update(overrides)
    if crop is not None:
        cfg["dataset"]["max_seq_len"] = crop
    dev = torch.device(device)
    model = AMNet.from_config(cfg).to(dev).train()
    criterion = AMNetLoss(model, cfg["train_cfg"]).to(dev).train()
    opt = make_optimizer(model, cfg["opt"])
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    batch = cfg["loader"]["batch_size"]
    feats, lengths, segs, labels = synthetic_batch(cfg, batch, cfg["dataset"]["max_seq_len"])
    feats, lengths = feats.to(dev), lengths.to(dev)
    times = []
    for i in range(iters + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            out = model(feats, lengths)
        loss = criterion(out, segs, labels)["final_loss"]
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first iteration warms up allocators and kernels
            times.append(time.perf_counter() - started)
    per_iter = sorted(times)[len(times) // 2]
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    return {
        "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "attention": attention_backend(dev, cfg["model"]["embd_dim"] // cfg["model"]["n_heads"]),
        "cuda_peak_mb": cuda_peak,
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


def measure_update(config: str, repeats: int) -> dict:
    """Milliseconds of AdamW's step and of the EMA update, as ``amnet-train`` runs them and as
    the per-tensor loop, interleaved repeat by repeat (median)."""
    import statistics

    import torch

    from amnet.config import load_config
    from amnet.model import AMNet
    from amnet.train import ModelEma, make_optimizer, parameter_groups

    torch.manual_seed(0)
    cfg = load_config(ROOT / config)
    model = AMNet.from_config(cfg).train()
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    ema = ModelEma(model, cfg["train_cfg"]["ema_decay"])

    def ema_loop() -> None:  # the per-tensor update
        with torch.no_grad():
            for e, v in zip(ema.module.state_dict().values(), model.state_dict().values(), strict=True):  # fmt: skip
                if e.dtype.is_floating_point:
                    e.lerp_(v, 1e-3)

    optimizers = {
        "adamw_fused": make_optimizer(model, cfg["opt"]),
        "adamw_loop": torch.optim.AdamW(
            parameter_groups(model, cfg["opt"]["weight_decay"]), lr=1e-4, foreach=False
        ),
    }
    steps = {name: opt.step for name, opt in optimizers.items()}
    steps.update({"ema_foreach": lambda: ema.update(model), "ema_loop": ema_loop})
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(repeats + 1):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            if i:  # the first round allocates the optimizer state
                times[name].append(time.perf_counter() - started)
    fused = optimizers["adamw_fused"].param_groups[0].get("fused")
    return {
        "config": config,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "fused_available": bool(fused),
        **{f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()},
    }


def measure_flops(config: str, length: int) -> dict:
    """FLOPs of one ``length``-snippet window through ``predict``, by top-level module."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from amnet.config import load_config
    from amnet.model import AMNet

    torch.manual_seed(0)
    cfg = load_config(ROOT / config)
    model = AMNet.from_config(cfg).eval()
    feats, lengths, _, _ = synthetic_batch(cfg, 1, length)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.predict(feats, lengths)
    total = counter.get_total_flops()
    counts = {
        name.removeprefix("AMNet."): sum(c.values())
        for name, c in counter.get_flop_counts().items()
        if name.startswith("AMNet.")
    }
    # The outermost modules that ran (a ModuleList's children count under the list's name).
    modules: dict[str, int] = {}
    for name, flops in counts.items():
        parts = name.split(".")
        if not any(".".join(parts[:i]) in counts for i in range(1, len(parts))):
            modules[parts[0]] = modules.get(parts[0], 0) + flops
    return {"config": config, "length": length, "total": total, "modules": modules}


HEAD_CASES = (  # config, batch, snippets
    ("configs/tiny_cpu.yaml", 4, 256),
    ("configs/thumos14_i3d.yaml", 2, 288),
    ("configs/thumos14_i3d.yaml", 2, 2304),
    ("configs/thumos14_i3d.yaml", 1, 2304),
)


def measure_heads(config: str, batch: int, length: int, repeats: int, device: str = "cpu") -> dict:
    """Milliseconds of both heads over all levels: joined (the model's form) and per level."""
    import statistics

    import torch
    from torch.nn import functional as F

    from amnet.config import load_config
    from amnet.model import AMNet
    from amnet.model.heads import join_levels

    torch.manual_seed(0)
    cfg = load_config(ROOT / config)
    dev = torch.device(device)
    model = AMNet.from_config(cfg).to(dev).train()
    cls, reg = model.cls_head, model.reg_head
    dim = cfg["model"]["embd_dim"]
    levels = [torch.randn(batch, length >> i, dim, device=dev, requires_grad=True) for i in range(model.n_levels)]  # fmt: skip
    masks = [torch.ones(batch, length >> i, 1, device=dev) for i in range(model.n_levels)]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def joined() -> torch.Tensor:
        both = join_levels(levels, masks, cls.gap)  # once for both heads, as the model does
        return cls(both).sum() + reg(both).sum()

    def alone(head: torch.nn.Module, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        for layer in head.trunk:  # one level through the same layers, nothing joined
            x = layer(x, m)
        return head.out(x, m)

    def per_level() -> torch.Tensor:
        pairs = list(zip(levels, masks, strict=True))
        logits = [alone(cls, x, m) for x, m in pairs]
        raw = [alone(reg, x, m) * s.scale for (x, m), s in zip(pairs, reg.scales, strict=True)]
        offsets = F.softplus(torch.cat(raw, 1)) * torch.cat(masks, 1)
        return torch.cat(logits, 1).sum() + offsets.sum()

    forms = {"joined": joined, "per_level": per_level}
    times: dict[str, list[float]] = {f"{n}_{p}": [] for n in forms for p in ("train", "forward")}
    for i in range(repeats + 1):
        for name, form in forms.items():
            sync()
            started = time.perf_counter()
            form().backward()
            sync()
            train = time.perf_counter() - started
            with torch.no_grad():
                started = time.perf_counter()
                form()
                sync()
                forward = time.perf_counter() - started
            if i:  # the first round warms up
                times[f"{name}_train"].append(train)
                times[f"{name}_forward"].append(forward)
    return {
        "config": config, "batch": batch, "length": length, "device": device,
        **{f"{name}_ms": 1e3 * statistics.median(t) for name, t in times.items()},
    }  # fmt: skip


def run_child(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["train", "infer", "update", "flops", "heads"])
    p.add_argument("--config", default="configs/thumos14_i3d.yaml")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--dims", default="128,256,512,1024")
    p.add_argument("--length", type=int, default=2304)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="base", help="train: comma list of base, dim1024, heads8")
    p.add_argument("--device", default="cpu", help="train, heads: cpu or cuda")
    p.add_argument("--crop", type=int, help="train: crop length (default: the config's)")
    p.add_argument("--json-out", help="also write all results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.what == "train":
            overrides = json.loads(args.overrides)
            r = measure_train(args.config, args.iters, overrides, args.device, args.crop)
            print(json.dumps(r))
        else:
            print(json.dumps(measure_infer(args.config, args.dim, args.length, args.repeats)))
        return

    if args.what == "flops":
        r = measure_flops(args.config, args.length)
        print(f"{args.config}, one window of {r['length']} snippets: "
              f"{r['total'] / 1e9:.1f} GFLOP, {r['total'] / r['length'] / 1e6:.1f} MFLOP per snippet")  # fmt: skip
        print("| module | GFLOP | share |")
        print("| --- | --- | --- |")
        for name, flops in sorted(r["modules"].items(), key=lambda kv: -kv[1]):
            print(f"| {name} | {flops / 1e9:.1f} | {flops / r['total']:.0%} |")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(r, indent=1))
        return
    if args.what == "heads":
        print("| config | batch × T | forward + backward: joined / per level (ms) | speed-up "
              "| forward: joined / per level (ms) | speed-up |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- |")
        rows = [measure_heads(c, b, t, args.repeats, args.device) for c, b, t in HEAD_CASES]
        for r in rows:
            print(
                f"| {Path(r['config']).stem} | {r['batch']} × {r['length']} "
                f"| {r['joined_train_ms']:.1f} / {r['per_level_train_ms']:.1f} "
                f"| {r['per_level_train_ms'] / r['joined_train_ms']:.2f}× "
                f"| {r['joined_forward_ms']:.1f} / {r['per_level_forward_ms']:.1f} "
                f"| {r['per_level_forward_ms'] / r['joined_forward_ms']:.2f}× |"
            )
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(rows, indent=1))
        return
    if args.what == "update":
        r = measure_update(args.config, args.repeats)
        print(
            f"{args.config} ({r['params_m']:.1f} M parameters), fused AdamW: {r['fused_available']}"
        )
        print("| update | as amnet-train runs it (ms) | per-tensor loop (ms) | speed-up |")
        print("| --- | --- | --- | --- |")
        for name, ours, loop in (("AdamW step", "adamw_fused", "adamw_loop"),
                                 ("EMA", "ema_foreach", "ema_loop")):  # fmt: skip
            a, b = r[f"{ours}_ms"], r[f"{loop}_ms"]
            print(f"| {name} | {a:.1f} | {b:.1f} | {b / a:.2f}× |")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(r, indent=1))
        return

    import torch

    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(
        f"machine: {machine}\ncommand: python benchmarks/bench_model.py {' '.join(sys.argv[1:])}\n"
    )
    results: list[dict] = []
    if args.what == "train":
        variants = {
            "base": {},
            "dim1024": {"embd_dim": 1024, "head_dim": 1024},
            "heads8": {"n_heads": 8},
        }
        print(
            "| config | device, attention | params (M) | batch × T | s / iteration "
            "| s / THUMOS14 epoch | peak RSS (MB) | peak CUDA (MB) |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in args.variants.split(","):
            child = ["train", "--config", args.config, "--iters", str(args.iters)]
            child += ["--device", args.device, "--overrides", json.dumps(variants[name])]
            child += [] if args.crop is None else ["--crop", str(args.crop)]
            try:
                r = run_child(child)
            except subprocess.CalledProcessError as exc:
                last = (exc.stderr.strip().splitlines() or ["failed"])[-1][:120]
                reason = "out of memory" if "out of memory" in exc.stderr.lower() else last
                print(f"| {Path(args.config).name} {name} | {args.device} | {reason} | | | | | |")
                results.append({"variant": name, "error": reason})
                continue
            r["variant"] = name
            results.append(r)
            cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
            print(
                f"| {Path(args.config).name} {name} | {r['device']}, {r['attention']} "
                f"| {r['params_m']:.1f} | {r['batch']} × {r['length']} "
                f"| {r['seconds_per_iter']:.3f} | {r['seconds_per_epoch_thumos14']:.0f} "
                f"| {r['peak_rss_mb']:.0f} | {cuda} |"
            )
    else:
        print("| D | T | s / chunk | snippets / s | peak RSS (MB) |")
        print("| --- | --- | --- | --- | --- |")
        for dim in [int(d) for d in args.dims.split(",")]:
            child = ["infer", "--config", args.config, "--dim", str(dim)]
            child += ["--length", str(args.length), "--repeats", str(args.repeats)]
            r = run_child(child)
            results.append(r)
            print(
                f"| {dim} | {r['length']} | {r['seconds']:.3f} | {r['snippets_per_s']:.0f} "
                f"| {r['peak_rss_mb']:.0f} |"
            )
    if args.json_out:
        out = {"machine": machine, "command": sys.argv[1:], "results": results}
        Path(args.json_out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
