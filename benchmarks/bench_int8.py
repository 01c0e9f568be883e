"""INT8 on CPUs: accuracy and end-to-end speed of the ONNX Runtime backends against PyTorch.

On a THUMOS14-shaped synthetic test split (``amnet-synth --preset thumos14``), with the
paper-size model (``configs/thumos14_i3d.yaml``, D = 512, 32.5 M parameters), trained briefly
on the synthetic validation split (or ``--ckpt``; see :func:`prepare_checkpoint`), this runs
side by side in one process:

- PyTorch eager fp32 (``amnet.inference.detect_video``),
- ONNX Runtime fp32 (the exported chunk graph through ``amnet.deploy.Detector``),
- ONNX Runtime INT8, MatMul weights only,
- ONNX Runtime INT8, MatMul + the 1-D convolutions rewritten as MatMul (the ``--int8`` default),

each end to end (read ``.npy`` -> chunked inference -> shared post-processing -> results JSON,
all timed; model loading is not). Videos go through the backends in rotating order, so machine
load hits all of them alike; one warm-up video per backend is not timed. It prints a markdown
table: seconds, snippets/s, speed-ups, mAP at tIoU 0.3:0.1:0.7 and their average, and the change
of average mAP against ONNX fp32, with the command and the machine.

    python benchmarks/bench_int8.py [--work DIR] [--videos 20] [--epochs 40] [--train-len 768]
                                    [--ckpt CKPT [--max-seq-len N]] [--threads 1] [--difficulty 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "thumos14_i3d.yaml"
PAPER_MAX_SEQ_LEN = 2304  # configs/thumos14_i3d.yaml


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def prepare_data(work: Path, videos: int, difficulty: float) -> Path:
    from amnet.synth import draw_layout, preset_class_names, write_dataset

    data = work / "data"
    if not (data / "annotations.json").is_file():
        layout = draw_layout("thumos14", videos=videos, seed=0)
        write_dataset(
            data, layout, preset_class_names("thumos14"), difficulty=difficulty, progress=False
        )
    return data


def with_max_seq_len(ckpt: Path, max_seq_len: int, out: Path) -> Path:
    """A copy of ``ckpt`` whose config chunks inference at ``max_seq_len`` snippets. The model has
    no positional encoding, so its weights do not depend on the length it was trained at."""
    from amnet.checkpoint import read_checkpoint, save_checkpoint

    fields = read_checkpoint(ckpt)
    if fields["config"]["dataset"]["max_seq_len"] == max_seq_len:
        return ckpt
    fields["config"]["dataset"]["max_seq_len"] = max_seq_len
    fields = {k: v for k, v in fields.items() if k not in ("format", "format_version", "version")}
    save_checkpoint(out, **fields)
    return out


def prepare_checkpoint(
    work: Path, data: Path, epochs: int, train_len: int, threads: int
) -> tuple[Path, str]:
    """Train the paper-size model briefly on the validation split. A CPU cannot run the paper's
    schedule (35 epochs on 2304-snippet crops), so this one is shorter: crops of ``train_len``
    snippets, lr 1e-3 with one warm-up epoch, EMA 0.99. Inference then chunks at the paper
    config's 2304 (see :func:`with_max_seq_len`)."""
    import torch

    from amnet.config import load_config
    from amnet.train import train

    run = work / f"run_e{epochs}_l{train_len}"
    ckpt = run / "last.pt"
    how = (
        f"configs/thumos14_i3d.yaml (D 512) trained {epochs} epoch(s) on the synthetic "
        f"validation split ({train_len}-snippet crops, lr 1e-3, 1 warm-up epoch, EMA 0.99)"
        if epochs
        else "configs/thumos14_i3d.yaml initialised, untrained (--epochs 0): mAP is meaningless"
    )
    if not ckpt.is_file():
        derived = work / "train.yaml"
        derived.write_text(
            f"base: {CONFIG}\n"
            f"dataset: {{max_seq_len: {train_len}}}\n"
            "opt: {learning_rate: 1.0e-3, warmup_epochs: 1}\n"
            "train_cfg: {ema_decay: 0.99, eval_every: 0}\n"
        )
        cfg = load_config(derived)
        torch.set_num_threads(threads)
        started = time.perf_counter()
        train(cfg, data, run, epochs=epochs, progress=False, overwrite=True)
        logging.info("trained in %.0f s", time.perf_counter() - started)
    return with_max_seq_len(ckpt, PAPER_MAX_SEQ_LEN, run / "last_2304.pt"), how


def run_backends(
    backends: dict[str, Callable[[np.ndarray, float, float], object]],
    videos: list[tuple[str, Path, float, float]],
    input_dim: int,
) -> tuple[dict[str, float], dict[str, dict[str, object]]]:
    from amnet.fileio import load_features

    names = list(backends)
    # Warm-up (not timed): first calls build kernels, allocate arenas and so on.
    _, path, duration, fps = videos[0]
    for name in names:
        backends[name](load_features(path, input_dim), duration, fps)
    seconds = dict.fromkeys(names, 0.0)
    detections: dict[str, dict[str, object]] = {name: {} for name in names}
    for i, (vid, path, duration, fps) in enumerate(videos):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            feats = load_features(path, input_dim)
            detections[name][vid] = backends[name](feats, duration, fps)
            seconds[name] += time.perf_counter() - start
    return seconds, detections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--videos", type=int, default=20, help="videos per split (default 20)")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (0: untrained)")
    parser.add_argument("--train-len", type=int, default=768, help="training crop (default 768)")
    parser.add_argument("--ckpt", type=Path, help="use this checkpoint instead of training")
    parser.add_argument(
        "--max-seq-len", type=int, help="with --ckpt: chunk inference at this length instead"
    )
    parser.add_argument("--threads", type=int, default=1, help="math threads, every backend")
    parser.add_argument("--difficulty", type=float, default=1.0, help="amnet-synth difficulty")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import onnxruntime as ort
    import torch

    from amnet.annotations import load_annotations, select_subset
    from amnet.checkpoint import load_model
    from amnet.deploy import Detector
    from amnet.export.quantize import quantize_int8
    from amnet.export.to_onnx import export_onnx
    from amnet.inference import detect_video
    from amnet.metadata import read_onnx_metadata
    from amnet.metrics import evaluate_detection
    from amnet.results import write_results

    torch.set_num_threads(args.threads)
    if args.work is None:
        import tempfile

        args.work = Path(tempfile.mkdtemp(prefix="bench_int8_"))
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args.work, args.videos, args.difficulty)
    if args.ckpt:
        ckpt, how = args.ckpt, f"checkpoint {args.ckpt}"
        if args.max_seq_len:
            ckpt = with_max_seq_len(ckpt, args.max_seq_len, args.work / "ckpt_chunked.pt")
            how += f" (inference chunks of {args.max_seq_len})"
    else:
        ckpt, how = prepare_checkpoint(args.work, data, args.epochs, args.train_len, args.threads)
    torch.set_num_threads(args.threads)

    onnx_path = args.work / "model.onnx"
    export = export_onnx(ckpt, onnx_path)
    int8_mm = quantize_int8(onnx_path, args.work / "model.int8-matmul.onnx", conv_as_matmul=False)
    int8_all = quantize_int8(onnx_path, args.work / "model.int8.onnx")
    model, cfg, class_names = load_model(ckpt)
    meta = read_onnx_metadata(onnx_path)

    def torch_backend(feats: np.ndarray, duration: float, fps: float) -> object:
        return detect_video(model, feats, cfg, duration, fps)

    def onnx_backend(path: Path) -> Callable[[np.ndarray, float, float], object]:
        detector = Detector(path, intra_op_threads=args.threads)
        return lambda feats, duration, fps: detector.detect_raw(feats, duration, fps)

    backends = {
        "PyTorch eager fp32": torch_backend,
        "ONNX Runtime fp32": onnx_backend(onnx_path),
        "ONNX Runtime INT8 (MatMul)": onnx_backend(int8_mm),
        "ONNX Runtime INT8 (MatMul + Conv as MatMul)": onnx_backend(int8_all),
    }
    ann = load_annotations(data / "annotations.json")
    test = select_subset(ann, "test")
    videos = [
        (vid, data / "features" / f"{vid}.npy", v.duration, v.fps or meta["fps"])
        for vid, v in sorted(test.items())
    ]
    snippets = sum(np.load(p, mmap_mode="r").shape[0] for _, p, _, _ in videos)
    seconds, detections = run_backends(backends, videos, meta["input_dim"])

    tious = cfg["test_cfg"]["tiou_thresholds"]
    rows = []
    for name, dets in detections.items():
        start = time.perf_counter()
        slug = name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("+", "")
        write_results(args.work / f"results_{slug}.json", dets, class_names)
        seconds[name] += time.perf_counter() - start
        result = evaluate_detection(test, dets, class_names, tious)
        rows.append((name, seconds[name], result))

    base_torch = seconds["PyTorch eager fp32"]
    base_onnx = seconds["ONNX Runtime fp32"]
    onnx_map = next(r.average_mAP for n, r_s, r in rows if n == "ONNX Runtime fp32")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    print(f"command: `{command}`")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {args.threads} math thread(s) per "
        f"backend; Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}"
    )
    print(
        f"test set: {len(videos)} synthetic THUMOS14-shaped videos, {snippets} snippets x "
        f"{meta['input_dim']} (amnet-synth --preset thumos14 --videos {args.videos}, "
        f"difficulty {args.difficulty:g}); chunks of {meta['max_seq_len']}, overlap "
        f"{meta['chunk_overlap']:g}"
    )
    print(f"model: {how}; D {cfg['model']['embd_dim']}, {params:.1f} M parameters")
    worst = max(r.scores_diff for r in export.parity)
    print(
        f"fp32 export parity vs PyTorch: max |Δ scores| {worst:.2g} over {len(export.parity)} cases"
    )
    print()
    head = " | ".join(f"mAP@{t:g}" for t in tious)
    print(
        f"| backend | end-to-end s | snippets/s | vs PyTorch | vs ONNX fp32 | {head} | avg mAP "
        "| Δ avg vs ONNX fp32 (points) |"
    )
    print("|---" * (7 + len(tious)) + "|")
    for name, secs, result in rows:
        maps = " | ".join(f"{100 * m:.2f}" for m in result.mAP)
        print(
            f"| {name} | {secs:.1f} | {snippets / secs:.0f} | {base_torch / secs:.2f}x | "
            f"{base_onnx / secs:.2f}x | {maps} | {100 * result.average_mAP:.2f} | "
            f"{100 * (result.average_mAP - onnx_map):+.2f} |"
        )
    summary = {
        "command": command,
        "snippets": snippets,
        "videos": len(videos),
        "threads": args.threads,
        "seconds": seconds,
        "average_mAP": {n: r.average_mAP for n, _, r in rows},
        "mAP": {n: r.mAP for n, _, r in rows},
    }
    (args.work / "bench_int8.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
