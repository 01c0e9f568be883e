"""Every CPU runtime on a trained model: seconds and average mAP, side by side.

One trained checkpoint and its exports, over a test split, video by video in turn (so a busy
machine slows all alike), scored with the ActivityNet metric:

- PyTorch fp32 and bf16 (autocast) on the ``.pt`` checkpoint,
- ONNX Runtime fp32 on ``--onnx`` and INT8 on ``--int8`` (dynamic or static),
- OpenVINO f32 and bf16 on ``--onnx``, and every static (QDQ) INT8 model with its float
  remainder in f32 and in bf16 (when OpenVINO is installed).

    amnet-export onnx --ckpt work/bench_train/runs/thumos14_i3d-seed0/last.pt \
        --out work/runtimes/model.onnx --int8
    python benchmarks/bench_cpu_runtimes.py --ckpt work/bench_train/runs/thumos14_i3d-seed0/last.pt \
        --onnx work/runtimes/model.onnx --int8 work/runtimes/model.int8.onnx \
        --data work/bench_data --threads 2

bf16 rows need a CPU with AVX-512 BF16 or AMX; they are left out elsewhere.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from amnet.checkpoint import load_model
from amnet.data import make_dataset
from amnet.deploy import Detector
from amnet.errors import AMNetError
from amnet.metadata import read_onnx_metadata
from amnet.metrics import evaluate_detection


def label(path: str, others: list[str]) -> str:
    """A model's row label: its scheme (dynamic/static) and file name, with its folder when
    another of ``others`` has the same file name (rows must not merge)."""
    scheme = read_onnx_metadata(path).get("quantization", "").split(" ", 1)[0]
    name = Path(path).name
    if sum(Path(o).name == name for o in others) > 1:
        name = f"{Path(path).parent.name}/{name}"
    return f"{scheme} {name}".strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--onnx", default=None)
    p.add_argument("--int8", action="append", default=[], help="INT8 models (repeat)")
    p.add_argument("--data", required=True)
    p.add_argument("--subset", default="test")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-pytorch", action="store_true", help="leave the PyTorch rows out")
    args = p.parse_args(argv)
    if len(set(map(str, args.int8))) != len(args.int8):
        p.error("--int8: the same model twice")

    _, cfg, names = load_model(args.ckpt)
    cfg["dataset"]["val_split"] = [args.subset]
    dataset = make_dataset(cfg, args.data, "val_split", False, names)
    plans = (
        []
        if args.no_pytorch
        else [
            ("PyTorch fp32", args.ckpt, {}),
            ("PyTorch bf16", args.ckpt, {"precision": "bf16"}),
        ]
    )
    if args.onnx:
        plans.append(("ONNX Runtime fp32", args.onnx, {}))
    for path in args.int8:
        plans.append((f"ONNX Runtime INT8 ({label(path, args.int8)})", path, {}))
    if importlib.util.find_spec("openvino"):
        if args.onnx:
            plans += [
                ("OpenVINO f32", args.onnx, {"runtime": "openvino"}),
                ("OpenVINO bf16", args.onnx, {"runtime": "openvino", "precision": "bf16"}),
            ]
        for path in args.int8:
            if read_onnx_metadata(path).get("quantization", "").startswith("static"):
                name = f"OpenVINO INT8 ({label(path, args.int8)})"
                plans.append((name, path, {"runtime": "openvino"}))
                # The float remainder (attention products, norms) in bf16.
                bf16 = {"runtime": "openvino", "precision": "bf16"}
                plans.append((f"{name}, rest bf16", path, bf16))
    detectors = {}
    for name, path, options in plans:
        try:
            detectors[name] = Detector(path, intra_op_threads=args.threads, **options)
        except AMNetError as exc:
            print(f"{name}: left out ({exc})")
    found: dict[str, dict] = {name: {} for name in detectors}
    seconds = dict.fromkeys(detectors, 0.0)
    worst = dict.fromkeys(detectors, 0.0)
    snippets = 0
    for i in range(len(dataset)):
        item = dataset[i]
        feats = item["feats"].numpy()
        snippets += feats.shape[0]
        window = feats[None, : cfg["dataset"]["max_seq_len"]]
        lengths = np.array([window.shape[1]])
        reference = None
        for name, detector in detectors.items():
            began = time.perf_counter()
            found[name][item["video_id"]] = detector.detect_raw(
                feats, item["duration"], item["fps"]
            )
            seconds[name] += time.perf_counter() - began
            scores = detector.backend.run(window, lengths)[0]
            reference = scores if reference is None else reference
            worst[name] = max(worst[name], float(np.abs(scores - reference).max()))

    gt = {v.video_id: v for v in dataset.videos}
    first = next(iter(detectors))
    print(f"{len(dataset)} videos, {snippets} snippets, windows of {cfg['dataset']['max_seq_len']}, "
          f"{args.threads or 'default'} threads")  # fmt: skip
    print()
    print(f"| runtime | seconds | snippets/s | × {first} | avg mAP | Δ mAP | "
          "max score Δ on a window |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base_map = None
    for name in detectors:
        r = evaluate_detection(gt, found[name], names, cfg["test_cfg"]["tiou_thresholds"])
        avg = 100 * r.average_mAP
        base_map = avg if base_map is None else base_map
        print(f"| {name} | {seconds[name]:.1f} | {snippets / seconds[name]:.0f} | "
              f"{seconds[first] / seconds[name]:.2f} | {avg:.2f} | {avg - base_map:+.2f} | "
              f"{worst[name]:.1e} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
