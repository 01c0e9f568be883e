"""Export a checkpoint with its attention written on unnormalised probabilities, for INT8.

The exported graph normally computes ``softmax(s) @ v``. Statically quantized with its
attention products (``quantize_int8_static(..., attention=True)``), the probabilities get 7 bits
over their calibrated range, and a diffuse row of a global head (2,304 keys at about 1/2,304
each) falls below one step. Here the graph computes ``(e @ v) / sum(e)`` with
``e = exp(s - max(s))``: ``e`` lies in [0, 1] with its row maximum exactly 1, so one step is
1/127 of the largest weight of its own row, and the division by the row sum comes after the
product. The same arithmetic in float (export parity is checked as usual).

    python benchmarks/export_unnormalised_attention.py --ckpt CKPT --calibration DATA \
        --out work/unnorm/model.onnx

writes ``model.onnx`` (float) and ``model.int8attn.onnx`` (static INT8, attention products
too, calibrated on the training split of DATA); ``--form softmax`` writes the same pair for the
graph as the product exports it, for comparison. Compare them with
``benchmarks/bench_cpu_runtimes.py`` (accuracy, seconds) and ``benchmarks/profile_openvino.py``
(where OpenVINO spends a window). Not a product option: see docs/BENCHMARKS.md, "INT8
attention on unnormalised probabilities".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import amnet.kernels.reference as reference


def dense_unnormalised(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor | None,
    key_bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """``reference._dense`` with the normalisation after the product."""
    scores = reference._dense_scores(q, k, windows, key_bias, scale)
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return torch.matmul(e, v.float()) / e.sum(-1, keepdim=True)


def band_unnormalised(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int, half: int, bias: torch.Tensor
) -> torch.Tensor:
    """``reference._banded_gathered`` with the normalisation after the product."""
    k_band, v_band = reference._band_gather(k, v, t, half)
    scores = torch.matmul(k_band, q.unsqueeze(-1)).squeeze(-1) + bias
    e = torch.exp(scores - scores.amax(-1, keepdim=True))
    return torch.matmul(e.unsqueeze(-2), v_band).squeeze(-2) / e.sum(-1, keepdim=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--calibration", required=True, help="data folder (training split)")
    p.add_argument("--out", required=True, help="the float model; INT8 goes beside it")
    p.add_argument("--form", choices=("unnormalised", "softmax"), default="unnormalised")
    args = p.parse_args(argv)

    if args.form == "unnormalised":
        # The traced forms only: the eager ones the model runs in PyTorch (the parity
        # reference) stay as they are.
        reference._dense = dense_unnormalised
        reference._banded_gathered = band_unnormalised
    from amnet.export.quantize import quantize_int8_static
    from amnet.export.to_onnx import _calibration_set, export_onnx

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = export_onnx(args.ckpt, out)
    worst = max(row.scores_diff for row in result.parity)
    print(f"wrote {out} (largest score difference from PyTorch: {worst:.2g})")
    windows, _ = _calibration_set(Path(args.ckpt), args.calibration, None)
    int8 = out.with_name(f"{out.stem}.int8attn.onnx")
    quantize_int8_static(out, int8, windows, attention=True)
    print(f"wrote {int8} (static INT8, attention products too, {len(windows)} windows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
