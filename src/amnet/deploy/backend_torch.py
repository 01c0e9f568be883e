"""PyTorch backend: an AMNet checkpoint (``.pt``) run eagerly, the reference the others match.

The only module of the runtime that imports torch. It computes what the exported graph computes
(``AMNet.predict``), with the checkpoint's EMA weights when it has them (as the exporter does).
``run`` holds no state between calls and runs under ``torch.inference_mode``, so several
threads may call it at once. ``precision="bf16"`` runs it under bfloat16 autocast (CPUs with
AVX-512 BF16 or AMX, and CUDA GPUs that have bf16); outputs come back as float32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from amnet.deploy.backends import check_batch, check_device, check_metadata, closed_error
from amnet.errors import AMNetError

logger = logging.getLogger(__name__)

__all__ = ["TorchBackend", "metadata_from_config"]


def metadata_from_config(
    cfg: dict[str, Any], class_names: list[str], weights: str = "checkpoint"
) -> dict[str, Any]:
    """The runtime metadata of a checkpoint, in the shape the exported models carry
    (``weights``: the set that runs, ``"ema"`` or ``"model"``)."""
    from amnet import __version__
    from amnet.metadata import build_metadata

    return build_metadata(
        cfg,
        list(class_names),
        checkpoint_sha256="",
        opset=0,
        weights=weights,
        amnet_version=__version__,
    )


class TorchBackend:
    """An :class:`amnet.model.AMNet` loaded from a checkpoint."""

    name = "torch"
    max_batch: int | None = None

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        intra_op_threads: int | None = None,
        use_ema: bool | None = None,
        precision: str = "fp32",
    ) -> None:
        import torch

        from amnet.checkpoint import model_from_checkpoint, read_checkpoint, weights_name

        self.path = Path(path)
        self.device = check_device(device, ("cpu", "cuda"), self.name)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise AMNetError(
                "device cuda asked for, but PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}); use device cpu"
            )
        if precision not in PRECISIONS:
            raise AMNetError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "bf16" and not _has_bf16(torch, self.device):
            raise AMNetError(
                f"precision bf16 asked for, but this {self.device.upper()} has no bfloat16 "
                "arithmetic; use fp32"
            )
        self.precision = precision
        if intra_op_threads:
            torch.set_num_threads(int(intra_op_threads))
        self._torch = torch
        ckpt = read_checkpoint(self.path)
        weights = weights_name(ckpt, use_ema)
        model, cfg, class_names = model_from_checkpoint(ckpt, self.path, use_ema)
        del ckpt
        self.model = model.to(self.device).eval()
        self.config = cfg
        self.metadata = check_metadata(
            metadata_from_config(cfg, class_names, weights), str(self.path)
        )
        self._input_dim = int(self.metadata["input_dim"])

    def run(self, features: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        features, lengths = check_batch(features, lengths, self._input_dim)
        model = self.model
        if model is None:
            raise closed_error(self.path)
        bf16 = self.precision == "bf16"
        with (
            torch.inference_mode(),
            torch.autocast(self.device, dtype=torch.bfloat16, enabled=bf16),
        ):
            # A read-only input (a memory-mapped file) is copied: torch warns about sharing it.
            x = torch.from_numpy(features if features.flags.writeable else features.copy())
            x = x.to(self.device)
            n = torch.from_numpy(lengths).to(self.device)
            scores, segments = model.predict(x, n)
            return (
                scores.float().cpu().numpy(),
                segments.float().cpu().numpy(),
            )

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"TorchBackend({str(self.path)!r}, device={self.device!r}, "
            f"precision={self.precision!r})"
        )


PRECISIONS = ("fp32", "bf16")


def _has_bf16(torch: Any, device: str) -> bool:
    """Whether ``device`` does bfloat16 arithmetic natively (emulation would be slower)."""
    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
