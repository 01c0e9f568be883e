"""Why OpenVINO's dynamic-shape model is slower than its static one, and what the graph could do.

Profiled on the paper-size model (OpenVINO's per-node counters), the static full-window model's
gain over the dynamic one comes mostly from the layout changes around the convolutions: the
model is channel-last (``[B, T, C]``) and each ``Conv1d`` sits between two transposes, which
OpenVINO folds into the convolution when shapes are static and runs as separate copies when T
is dynamic. This times, on a stack of three ``MaskedConv1d``-like blocks (conv → mask →
LayerNorm → ReLU → mask, as in the heads), four ways to write the same computation, each
compiled with a dynamic and a static T:

- ``transposes``: the model's form (transpose, Conv1d, transpose);
- ``concat-matmul``: the three shifted inputs concatenated on channels, one MatMul (no
  transposes, one copy of 3x the input);
- ``shifted-matmuls``: three MatMuls, their outputs shifted and added;
- ``channel-first``: one transpose in and out, LayerNorm over channels written out.

    python benchmarks/bench_openvino_conv_layouts.py [--length 1152] [--dim 512] \
        [--precision bf16] [--threads 2]

Needs the ``[openvino]`` and ``[train]`` extras. Prints one line per form and shape (median of
15 calls after 3 warm-up calls) and the largest difference from the model's form in PyTorch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Transposes(nn.Module):
    """The model's form: each convolution between two transposes."""

    def __init__(self, dim: int, layers: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, 3, padding=1, bias=False) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x.transpose(1, 2)).transpose(1, 2) * mask)) * mask
        return x


class ConcatMatmul(Transposes):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            w = conv.weight.permute(0, 2, 1).reshape(conv.weight.shape[0], -1)
            p = F.pad(x, (0, 0, 1, 1))
            shifted = torch.cat([p[:, 0:t], p[:, 1 : t + 1], p[:, 2 : t + 2]], dim=2)
            x = F.relu(norm((shifted @ w.t()) * mask)) * mask
        return x


class ShiftedMatmuls(Transposes):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            w = conv.weight
            before, here, after = (x @ w[:, :, k].t() for k in range(3))
            y = here + F.pad(before, (0, 0, 1, 0))[:, :t] + F.pad(after, (0, 0, 0, 1))[:, 1:]
            x = F.relu(norm(y * mask)) * mask
        return x


class ChannelFirst(Transposes):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, m = x.transpose(1, 2), mask.transpose(1, 2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            y = conv(x) * m
            centred = y - y.mean(1, keepdim=True)
            var = (centred * centred).mean(1, keepdim=True)
            y = centred / torch.sqrt(var + norm.eps) * norm.weight[:, None] + norm.bias[:, None]
            x = F.relu(y) * m
        return x.transpose(1, 2)


FORMS = {
    "transposes": Transposes,
    "concat-matmul": ConcatMatmul,
    "shifted-matmuls": ShiftedMatmuls,
    "channel-first": ChannelFirst,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=1152)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from amnet.deploy.backend_openvino import compile_config, import_openvino

    ov = import_openvino()
    core = ov.Core()
    config = compile_config(args.precision, args.threads)
    torch.manual_seed(0)
    reference = Transposes(args.dim).eval()
    x = torch.randn(1, args.length, args.dim)
    mask = torch.ones(1, args.length, 1)
    with torch.no_grad():
        want = reference(x, mask)
    inputs = {"x": x.numpy(), "mask": mask.numpy()}
    with tempfile.TemporaryDirectory() as tmp:
        for name, form in FORMS.items():
            module = form(args.dim).eval()
            module.load_state_dict(reference.state_dict())
            with torch.no_grad():
                diff = float((module(x, mask) - want).abs().max())
            path = Path(tmp) / f"{name}.onnx"
            torch.onnx.export(
                module, (x, mask), str(path), input_names=["x", "mask"], opset_version=17,
                dynamic_axes={"x": {1: "t"}, "mask": {1: "t"}}, dynamo=False,
            )  # fmt: skip
            for shape in ("dynamic", "static"):
                model = core.read_model(str(path))
                if shape == "static":
                    model.reshape({"x": [1, args.length, args.dim], "mask": [1, args.length, 1]})
                request = core.compile_model(model, "CPU", config).create_infer_request()
                for _ in range(3):
                    request.infer(inputs)
                times = []
                for _ in range(15):
                    began = time.perf_counter()
                    request.infer(inputs)
                    times.append(time.perf_counter() - began)
                print(f"{name:16s} {shape:8s} {1000 * statistics.median(times):7.2f} ms"
                      f"   (max diff vs the model's form in PyTorch: {diff:.1e})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
