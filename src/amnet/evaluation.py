"""Evaluating a PyTorch AMNet on a split: detections through the shared chunk loop and
post-processing, then the ActivityNet metric."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from amnet.data import VideoFeatureDataset
from amnet.inference import detect_dataset
from amnet.metrics import EvaluationResult, evaluate_detection

__all__ = ["evaluate_model"]


def evaluate_model(
    model: torch.nn.Module,
    dataset: VideoFeatureDataset,
    cfg: Mapping[str, Any],
    device: torch.device,
    progress: bool = True,
) -> tuple[dict, EvaluationResult]:
    """Detections and the ActivityNet metric of ``model`` on ``dataset``."""
    items = (dataset[i] for i in range(len(dataset)))
    detections = detect_dataset(model, items, cfg, device, progress=progress, total=len(dataset))
    gt = {v.video_id: v for v in dataset.videos}
    result = evaluate_detection(
        gt, detections, dataset.class_names, cfg["test_cfg"]["tiou_thresholds"]
    )
    return detections, result
