"""What folding the exported graph's constants buys: the traced graph against the graph that
``amnet-export onnx`` writes (ONNX Runtime's basic optimisations applied once, at export), for
one checkpoint, side by side in one process.

    python benchmarks/bench_graph_folding.py --ckpt work/mem/paper.pt [--rounds 3]
        [--length 2304] [--work work/folding] [--json]

Reports, for each graph: nodes, file size, seconds to open an ONNX Runtime session, to compile
for OpenVINO (when installed), to quantize statically (2 calibration windows), and one window's
inference time; and the largest output difference between the two graphs. Loads are interleaved
round by round (median); the quantization runs once per graph.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort

    from amnet.checkpoint import load_model
    from amnet.export.quantize import quantize_int8_static
    from amnet.export.to_onnx import _export_graph, _fold_constants
    from amnet.metadata import INPUT_NAMES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--length", type=int, default=2304, help="snippets in the timed window")
    p.add_argument("--work", default="work/folding")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, cfg, _ = load_model(args.ckpt)
    dim, max_len = cfg["dataset"]["input_dim"], cfg["dataset"]["max_seq_len"]
    paths = {"traced": work / "traced.onnx", "folded": work / "folded.onnx"}
    export_s, _ = _timed(lambda: _export_graph(model, dim, max_len, 17, paths["traced"]))
    shutil.copy(paths["traced"], paths["folded"])
    fold_s, _ = _timed(lambda: onnx.save(_fold_constants(paths["folded"]), str(paths["folded"])))

    rng = np.random.default_rng(0)
    length = min(args.length, max_len)
    feeds = {
        INPUT_NAMES[0]: np.abs(rng.normal(0, 0.2, (1, length, dim))).astype(np.float32),
        INPUT_NAMES[1]: np.array([length], dtype=np.int64),
    }
    try:
        import openvino as ov
    except ImportError:
        ov = None
    loads: dict[str, list[float]] = {name: [] for name in paths}
    compiles: dict[str, list[float]] = {name: [] for name in paths}
    runs: dict[str, list[float]] = {name: [] for name in paths}
    outputs = {}
    for _ in range(args.rounds):
        for name, path in paths.items():
            seconds, session = _timed(
                lambda path=path: ort.InferenceSession(
                    str(path), providers=["CPUExecutionProvider"]
                )
            )
            loads[name].append(seconds)
            session.run(None, feeds)  # warm-up
            seconds, outputs[name] = _timed(lambda session=session: session.run(None, feeds))
            runs[name].append(seconds)
            if ov is not None:
                core = ov.Core()
                seconds, _ = _timed(
                    lambda path=path, core=core: core.compile_model(str(path), "CPU")
                )
                compiles[name].append(seconds)
    windows = [(feeds[INPUT_NAMES[0]][:, :256], np.array([256], dtype=np.int64))] * 2
    quantize = {
        name: _timed(
            lambda path=path: quantize_int8_static(path, path.with_suffix(".q.onnx"), windows)
        )[0]
        for name, path in paths.items()
    }
    diff = max(
        float(np.max(np.abs(a - b), initial=0.0))
        for a, b in zip(outputs["traced"], outputs["folded"], strict=True)
    )
    rows = []
    for name, path in paths.items():
        rows.append(
            {
                "graph": name,
                "nodes": len(onnx.load(str(path), load_external_data=False).graph.node),
                "mb": path.stat().st_size / 2**20,
                "ort_load_s": statistics.median(loads[name]),
                "openvino_compile_s": statistics.median(compiles[name]) if compiles[name] else None,
                "static_int8_s": quantize[name],
                "window_s": statistics.median(runs[name]),
            }
        )
    report = {
        "ckpt": str(args.ckpt),
        "length": length,
        "rounds": args.rounds,
        "export_s": export_s,
        "fold_s": fold_s,
        "max_output_diff": diff,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report))
    print(f"export {export_s:.1f} s, folding {fold_s:.2f} s, max output difference {diff:.3g}")
    print("| graph | nodes | MB | ORT load s | OpenVINO compile s | static INT8 s | window s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        vino = "n/a" if r["openvino_compile_s"] is None else f"{r['openvino_compile_s']:.2f}"
        print(
            f"| {r['graph']} | {r['nodes']:,} | {r['mb']:.1f} | {r['ort_load_s']:.2f} | {vino} "
            f"| {r['static_int8_s']:.1f} | {r['window_s']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
