"""The reference attention's eager and traced forms on a CPU (``amnet.kernels.reference``), side
by side. Run eagerly (CPU training, the PyTorch backend) windowed heads take the band one
diagonal at a time ("shifted") and global heads go through PyTorch's fused attention ("fused");
traced for ONNX export, the band is gathered into ``[B, H, T, S, Dh]`` keys and values and
multiplied ("gathered") and global heads are written out ("explicit"). This measures why.

    python benchmarks/bench_attention_forms.py [--threads 2] [--rounds 5] [--json]

Three measurements, the forms interleaved round by round in one process:

1. the attention alone (``group_attention_reference``), windowed heads (gathered vs shifted)
   and global heads (explicit vs fused), forward and forward + backward, at the tiny model's
   training shape, the paper model's training crop and its inference window;
2. the paper-size model (``configs/thumos14_i3d.yaml``, initialised) through ``predict`` on one
   2,304-snippet window in PyTorch: each change alone and both;
3. the same model exported to ONNX with the traced band form before ("stacked": one slice per
   offset) and now ("gathered": one index), its export and loading times, and the graph run on
   that window by ONNX Runtime (fp32 and dynamic INT8) and OpenVINO bf16 where installed
   (``--ckpt`` a checkpoint to export instead of an initialised model).

Reported: median milliseconds, the ratio, and the largest output difference between the forms.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import amnet.kernels.reference as reference
from amnet.kernels.reference import group_attention_reference

ROOT = Path(__file__).resolve().parents[1]


def _banded_stacked(q, k, v, t: int, half: int, bias: torch.Tensor) -> torch.Tensor:
    """The traced form before the gathered one: the band's keys and values stacked from one
    shifted slice per offset (Slice, Unsqueeze and Concat per offset in ONNX, plus the shape
    arithmetic of each dynamic slice); otherwise the gathered form's arithmetic."""
    k_pad = torch.nn.functional.pad(k, (0, 0, half, half))
    v_pad = torch.nn.functional.pad(v, (0, 0, half, half))
    span = 2 * half + 1
    k_band = torch.stack([k_pad[:, :, d : d + t] for d in range(span)], dim=3)
    v_band = torch.stack([v_pad[:, :, d : d + t] for d in range(span)], dim=3)
    scores = torch.matmul(k_band, q.unsqueeze(-1)).squeeze(-1)
    probs = torch.softmax(scores + bias, dim=-1)
    return torch.matmul(probs.unsqueeze(-2), v_band).squeeze(-2)


# ``reference._banded`` pinned to one of its forms, in eager runs and in export.
BAND: dict[str, Callable] = {
    "gathered": functools.partial(reference._banded, form=reference._banded_gathered),
    "shifted": functools.partial(reference._banded, form=reference._banded_shifted),
    "stacked": functools.partial(reference._banded, form=_banded_stacked),
}
GLOBAL: dict[str, Callable] = {
    "explicit": lambda q, k, v, key_bias, scale: reference._dense(q, k, v, None, key_bias, scale),
    "fused": reference._global,
}
CHOSEN = (reference._banded, reference._global)  # what the model uses (eager / traced)


def _use(band: str | None, global_: str | None) -> None:
    """Pin the forms (None: the model's own choice)."""
    reference._banded = BAND[band] if band else CHOSEN[0]
    reference._global = GLOBAL[global_] if global_ else CHOSEN[1]


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e3


def _time_forms(q, k, v, windows, lengths, forms: dict, rounds: int) -> tuple[dict, float]:
    """Median ms of each form (name -> (band, global)), forward and forward + backward,
    interleaved over ``rounds``; and the largest output difference between the two forms."""
    times: dict[str, dict[str, list[float]]] = {f: {"fwd": [], "fwd+bwd": []} for f in forms}
    grads = [x.clone().requires_grad_() for x in (q, k, v)]

    def forward() -> torch.Tensor:
        return group_attention_reference(q, k, v, windows, lengths)

    def forward_backward() -> None:
        group_attention_reference(*grads, windows, lengths).sum().backward()

    outs = {}
    for _ in range(rounds):
        for form, pinned in forms.items():
            _use(*pinned)
            outs[form] = forward()
            times[form]["fwd"].append(_median_ms(forward, 3))
            times[form]["fwd+bwd"].append(_median_ms(forward_backward, 3))
    _use(None, None)
    first, second = outs.values()
    return times, float((first - second).abs().max())


def attention_rows(rounds: int) -> list[dict]:
    shapes = [  # (name, B, H, T, Dh, window of the windowed heads)
        ("tiny model, training", 4, 2, 256, 16, 9),
        ("paper model, training crop", 2, 2, 288, 128, 19),
        ("paper model, inference window", 1, 2, 2304, 128, 19),
    ]
    kinds = {  # heads -> (the forms compared, their windows)
        "windowed": ({"gathered": ("gathered", None), "shifted": ("shifted", None)}, None),
        "global": ({"explicit": (None, "explicit"), "fused": (None, "fused")}, 0),
    }
    rows = []
    for name, b, h, t, dh, w in shapes:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(b, h, t, dh, generator=gen) for _ in range(3))
        lengths = torch.tensor([t] + [t * 2 // 3] * (b - 1))
        for heads, (forms, window) in kinds.items():
            windows = [w if window is None else window] * h
            times, diff = _time_forms(q, k, v, windows, lengths, forms, rounds)
            (old_name, new_name) = forms
            for mode in ("fwd", "fwd+bwd"):
                old, new = (statistics.median(times[f][mode]) for f in forms)
                rows.append({"shape": name, "heads": heads, "B": b, "H": h, "T": t, "Dh": dh,
                             "window": windows[0], "pass": mode, "before": old_name,
                             "after": new_name, "before_ms": old, "after_ms": new,
                             "speedup": old / new, "max_diff": diff})  # fmt: skip
    return rows


def _paper_checkpoint(folder: Path, ckpt: str | None) -> Path:
    if ckpt:
        return Path(ckpt)
    from amnet.checkpoint import save_checkpoint
    from amnet.config import load_config
    from amnet.model import AMNet

    cfg = load_config(ROOT / "configs" / "thumos14_i3d.yaml")
    torch.manual_seed(0)
    model = AMNet.from_config(cfg)
    names = [f"class_{i}" for i in range(cfg["dataset"]["num_classes"])]
    path = folder / "paper.pt"
    save_checkpoint(path, config=cfg, class_names=names, model=model.state_dict(), ema=None)
    return path


def _runners(path: Path, threads: int, feed: dict) -> dict[str, Callable[[], tuple]]:
    """The exported graph in each CPU runtime the project ships: ONNX Runtime fp32 and
    dynamic INT8, and OpenVINO bf16 where it is installed and the CPU has bfloat16."""
    import onnxruntime as ort

    from amnet.export.quantize import quantize_int8

    def ort_run(model: Path) -> Callable[[], tuple]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        return lambda: tuple(session.run(None, feed))

    int8 = path.with_suffix(".int8.onnx")
    quantize_int8(path, int8)
    runners = {"onnxruntime": ort_run(path), "onnxruntime-int8": ort_run(int8)}
    try:
        import openvino as ov
    except ImportError:
        return runners
    core = ov.Core()
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads}
        compiled = core.compile_model(str(path), "CPU", config)
        runners["openvino-bf16"] = lambda: tuple(compiled(feed).values())
    return runners


def model_rows(ckpt: Path, rounds: int, folder: Path) -> list[dict]:
    import onnx

    from amnet.checkpoint import load_model
    from amnet.export.to_onnx import export_onnx

    model, cfg, _ = load_model(ckpt)
    length = int(cfg["dataset"]["max_seq_len"])
    rng = np.random.default_rng(0)
    feats = np.abs(rng.normal(0, 0.2, (1, length, cfg["dataset"]["input_dim"]))).astype(np.float32)
    lens = np.array([length], dtype=np.int64)
    x, xl = torch.from_numpy(feats), torch.from_numpy(lens)
    feed = {"features": feats, "lengths": lens}

    def torch_run(band: str | None, global_: str | None) -> Callable[[], tuple]:
        def run() -> tuple:
            _use(band, global_)
            with torch.inference_mode():
                return tuple(t.numpy() for t in model.predict(x, xl))

        return run

    # (row, before, after): PyTorch eager with each change alone and both, then each exported
    # runtime on the graph traced with each band form (traces write global heads out anyway).
    compared: list[tuple[str, Callable[[], tuple], Callable[[], tuple]]] = [
        ("PyTorch, band gathered -> shifted (global explicit)",
         torch_run("gathered", "explicit"), torch_run("shifted", "explicit")),
        ("PyTorch, global explicit -> fused (band shifted)",
         torch_run("shifted", "explicit"), torch_run("shifted", "fused")),
        ("PyTorch, both (gathered + explicit -> the model's eager forms)",
         torch_run("gathered", "explicit"), torch_run(None, None)),
    ]  # fmt: skip
    # The exported graph: the traced band form before (stacked slices) and now (one gather).
    traced = ("stacked", "gathered")
    graphs, nodes, exports, loads = {}, {}, {}, {}
    for _ in range(rounds):  # export and session creation interleaved too
        for form in traced:
            _use(form, None)
            began = time.perf_counter()
            path = export_onnx(ckpt, folder / f"{form}.onnx", parity=False).path
            exports.setdefault(form, []).append(time.perf_counter() - began)
            began = time.perf_counter()
            graphs[form] = _runners(path, torch.get_num_threads(), feed)
            loads.setdefault(form, []).append(time.perf_counter() - began)
            nodes[form] = len(onnx.load(str(path), load_external_data=False).graph.node)
    _use(None, None)
    for runtime in graphs["gathered"]:
        label = (f"{runtime}, graph traced stacked -> gathered "
                 f"({nodes['stacked']:,} -> {nodes['gathered']:,} nodes)")  # fmt: skip
        compared.append((label, graphs["stacked"][runtime], graphs["gathered"][runtime]))

    times: dict[tuple[str, int], list[float]] = {(c[0], i): [] for c in compared for i in (1, 2)}
    outs = {}
    for _ in range(rounds):
        for label, before, after in compared:
            for index, run in ((1, before), (2, after)):
                times[label, index].append(_median_ms(run, 1))
                outs[label, index] = run()
    _use(None, None)
    rows = [
        {"run": f"{what}, stacked -> gathered", "T": length, "before_ms": old, "after_ms": new,
         "speedup": old / new, "max_diff": 0.0}
        for what, seconds in (("export (no parity check)", exports),
                              ("INT8 quantization and loading into every runtime", loads))
        for old, new in [(1e3 * statistics.median(seconds[f]) for f in traced)]
    ]  # fmt: skip
    for label, _, _ in compared:
        old, new = (statistics.median(times[label, i]) for i in (1, 2))
        diff = max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(outs[label, 1], outs[label, 2], strict=True)
        )
        rows.append({"run": label, "T": length, "before_ms": old, "after_ms": new,
                     "speedup": old / new, "max_diff": diff})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    p.add_argument("--ckpt", help="export and time this checkpoint instead of an initialised one")
    p.add_argument("--json", action="store_true", help="last stdout line: the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    attention = attention_rows(args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_rows(_paper_checkpoint(Path(tmp), args.ckpt), args.rounds, Path(tmp))
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, {args.rounds} interleaved rounds, median")  # fmt: skip
    print("| attention alone | heads | pass | before -> after | before ms | after ms | speed-up "
          "| max |Δ| |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in attention:
        print(f"| {r['shape']} (B {r['B']}, H {r['H']}, T {r['T']}, Dh {r['Dh']}) "
              f"| {r['heads']} (w {r['window']}) | {r['pass']} | {r['before']} -> {r['after']} "
              f"| {r['before_ms']:.2f} | {r['after_ms']:.2f} | {r['speedup']:.2f}x "
              f"| {r['max_diff']:.1e} |")  # fmt: skip
    print("\n| paper-size model, one window | before ms | after ms | speed-up | max |Δ| |")
    print("|---|---|---|---|---|")
    for r in model:
        print(f"| {r['run']} | {r['before_ms']:.0f} | {r['after_ms']:.0f} | {r['speedup']:.2f}x "
              f"| {r['max_diff']:.1e} |")  # fmt: skip
    if args.json:
        print(json.dumps({"threads": args.threads, "rounds": args.rounds,
                          "attention": attention, "model": model}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
