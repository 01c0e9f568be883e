"""A config's splits as datasets: where the files are, which videos, the input statistics."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amnet.data.dataset import VideoFeatureDataset
from amnet.errors import AMNetError
from amnet.fileio import load_features


def resolve_data_paths(
    cfg: Mapping[str, Any], data_dir: str | os.PathLike | None
) -> tuple[Path, Path]:
    """Annotation file and feature folder: config values, relative to ``data_dir`` when given."""
    base = Path(data_dir) if data_dir is not None else Path(".")
    ann = cfg["dataset"]["annotation_file"] or "annotations.json"
    feats = cfg["dataset"]["feature_folder"] or "features"
    ann_path, feat_path = base / ann, base / feats
    if data_dir is None and cfg["dataset"]["annotation_file"] is None:
        raise AMNetError("no data: pass --data DIR or set dataset.annotation_file in the config")
    if not ann_path.is_file():
        raise AMNetError(f"{ann_path}: annotation file not found")
    if not feat_path.is_dir():
        raise AMNetError(f"{feat_path}: feature folder not found")
    return ann_path, feat_path


def make_dataset(
    cfg: Mapping[str, Any],
    data_dir: str | os.PathLike | None,
    split: str,
    training: bool,
    class_names: list[str] | None = None,
    seed: int = 0,
) -> VideoFeatureDataset:
    ann, feats = resolve_data_paths(cfg, data_dir)
    d = cfg["dataset"]
    dataset = VideoFeatureDataset(
        ann, feats, d[split], is_training=training, input_dim=d["input_dim"], max_seq_len=d["max_seq_len"],
        feature_stride=d["feature_stride"], num_frames=d["num_frames"], default_fps=d["default_fps"],
        trunc_thresh=d["trunc_thresh"], crop_ratio=d["crop_ratio"] if training else None,
        class_names=class_names, file_ext=d["file_ext"], file_prefix=d["file_prefix"], seed=seed,
        class_agnostic=d["num_classes"] == 1, force_upsampling=d["force_upsampling"],
    )  # fmt: skip
    if class_names is None and len(dataset.class_names) < d["num_classes"]:
        # Ids past the largest one present (classes absent from a small split) keep a placeholder
        # name, so the model still has the configured number of outputs.
        dataset.class_names += [
            f"class_{i}" for i in range(len(dataset.class_names), d["num_classes"])
        ]
    if len(dataset.class_names) != d["num_classes"]:
        raise AMNetError(
            f"{ann}: {len(dataset.class_names)} classes in the annotations, the config says dataset.num_classes={d['num_classes']}"
        )
    return dataset


def feature_statistics(
    dataset: VideoFeatureDataset, max_videos: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over the snippets of (up to) ``max_videos`` videos."""
    total: np.ndarray | None = None
    total_sq: np.ndarray | None = None
    count = 0
    step = max(1, len(dataset) // max_videos)
    for index in range(0, len(dataset), step):
        feats = load_features(
            dataset.feature_path(dataset.videos[index].video_id), dataset.input_dim
        ).astype(np.float64)
        total = feats.sum(0) if total is None else total + feats.sum(0)
        total_sq = (feats**2).sum(0) if total_sq is None else total_sq + (feats**2).sum(0)
        count += feats.shape[0]
    if not count or total is None or total_sq is None:
        raise AMNetError("the training split has no snippets")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()
