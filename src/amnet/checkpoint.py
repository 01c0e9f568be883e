"""Checkpoints: plain dicts of tensors and builtins, loadable with ``weights_only=True``."""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from amnet import __version__
from amnet.config import config_from_dict
from amnet.errors import AMNetError
from amnet.fileio import atomic_output, refuse_special_input, write_failure
from amnet.model import AMNet

FORMAT = "amnet-checkpoint"
# 2: softplus regression offsets (format 1 checkpoints used ReLU and still load as such) and
# ``weights``, the set of weights validation chose for inference ("ema" or "raw").
FORMAT_VERSION = 2


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> None:
    """Write a checkpoint atomically (temporary file, then rename)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__, **fields}
    with atomic_output(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as exc:  # its zip writer's words for a full disk: "unexpected pos"
            raise write_failure(path, exc) from None


def _is_cut_zip(path: Path) -> bool:
    """A file that starts as a zip archive (torch's format) but has no intact end: cut short."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" and not zipfile.is_zipfile(path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and sanity-check a checkpoint file; every failure is a one-line AMNetError."""
    path = Path(path)
    refuse_special_input(path)
    if path.is_dir():
        raise AMNetError(f"{path}: is a folder, expected a checkpoint file")
    if not path.is_file():
        raise AMNetError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # damaged files also trip torch's protocol warnings
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise AMNetError(f"{path}: too large to load") from None
    except Exception as exc:  # torch's unpickler raises many types on damaged or foreign files
        if path.suffix.lower() in (".onnx", ".plan", ".engine"):
            raise AMNetError(
                f"{path}: an exported model, not a checkpoint (give the .pt file amnet-train wrote)"
            ) from None
        said = str(exc)
        if "unsupported global" in said.lower():  # a pickled model, or code run on loading
            raise AMNetError(
                f"{path}: not an AMNet checkpoint (it holds pickled Python objects, which are "
                "never loaded: checkpoints are read with weights_only=True)"
            ) from None
        if _is_cut_zip(path):
            raise AMNetError(
                f"{path}: not a readable checkpoint (truncated or damaged: its zip archive is "
                "incomplete)"
            ) from None
        # torch's refusal is a paragraph that suggests loading unsafely: keep its reason only.
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", said)
        if reason:
            raise AMNetError(
                f"{path}: not a readable checkpoint (the weights-only loader refused it: "
                f"{reason.group(1).strip()[:120]})"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = re.sub(r"\x1b\[[0-9;]*m", "", first)  # torch colours some messages
        raise AMNetError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {first[:160]})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AMNetError(f"{path}: not an AMNet checkpoint")
    for key in ("config", "class_names", "model"):
        if key not in ckpt:
            raise AMNetError(f"{path}: AMNet checkpoint without '{key}'")
    version = ckpt.get("format_version")
    if (
        not isinstance(version, int)
        or isinstance(version, bool)
        or not 1 <= version <= FORMAT_VERSION
    ):
        raise AMNetError(
            f"{path}: checkpoint format_version {version!r} is not one this package reads (1-{FORMAT_VERSION})"
        )
    if not isinstance(ckpt["config"], dict):
        raise AMNetError(f"{path}: checkpoint field 'config' must be a mapping")
    names = ckpt["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise AMNetError(
            f"{path}: checkpoint field 'class_names' must be a list of non-empty names"
        )
    for key in ("model", "ema"):  # state dicts: names -> tensors (``ema`` may be absent)
        weights = ckpt.get(key)
        if (key == "model" or weights is not None) and not (
            isinstance(weights, dict)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items())
        ):
            raise AMNetError(
                f"{path}: checkpoint field {key!r} must map parameter names to tensors"
            )
    if ckpt.get("weights", "ema") not in ("ema", "raw"):
        raise AMNetError(
            f"{path}: checkpoint field 'weights' must be 'ema' or 'raw', got {ckpt['weights']!r}"
        )
    if version == 1:
        # Format 1 predates the softplus offsets: its weights belong to the ReLU head.
        model_cfg = ckpt["config"].get("model")
        if isinstance(model_cfg, dict):
            model_cfg.setdefault("offset_activation", "relu")
    return ckpt


def chosen_weights(ckpt: dict[str, Any], use_ema: bool | None = None) -> dict[str, Any]:
    """The state dict to run: EMA or raw as asked, else the set validation chose when the
    checkpoint was written (``weights``), else EMA when present."""
    if use_ema is None:
        use_ema = ckpt.get("weights", "ema") != "raw"
    return ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]


def weights_name(ckpt: dict[str, Any], use_ema: bool | None = None) -> str:
    """``"ema"`` or ``"model"``: the set :func:`chosen_weights` runs, as model metadata names it."""
    return "ema" if chosen_weights(ckpt, use_ema) is ckpt.get("ema") else "model"


def load_model(
    path: str | os.PathLike, use_ema: bool | None = None
) -> tuple[AMNet, dict[str, Any], list[str]]:
    """The model of a checkpoint, its config and class names. ``use_ema`` None runs the weights
    the checkpoint names (see :func:`chosen_weights`); True/False force EMA/raw."""
    return model_from_checkpoint(read_checkpoint(path), path, use_ema)


def model_from_checkpoint(
    ckpt: dict[str, Any], path: str | os.PathLike, use_ema: bool | None = None
) -> tuple[AMNet, dict[str, Any], list[str]]:
    """:func:`load_model` on a checkpoint already read (``path`` names it in errors)."""
    cfg = config_from_dict(ckpt["config"], f"{path} (config)")
    names = ckpt["class_names"]
    if len(names) != cfg["dataset"]["num_classes"]:
        raise AMNetError(
            f"{path}: {len(names)} class names for dataset.num_classes "
            f"{cfg['dataset']['num_classes']} in its config"
        )
    model = AMNet.from_config(cfg)
    weights = chosen_weights(ckpt, use_ema)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise AMNetError(
            f"{path}: weights do not match the architecture of its config ({str(exc).splitlines()[0][:160]})"
        ) from None
    model.eval()
    return model, cfg, list(ckpt["class_names"])
