"""Evaluating a PyTorch AMNet on a split: detections through the shared chunk loop and
post-processing, then the ActivityNet metric."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from amnet.class_scores import DEFAULT_TOPK, ClassScores, agnostic_ground_truth, fuse_results
from amnet.data import VideoFeatureDataset
from amnet.errors import AMNetError
from amnet.inference import detect_dataset
from amnet.metrics import EvaluationResult, evaluate_detection

if TYPE_CHECKING:
    from amnet.model import AMNet

__all__ = ["evaluate_model"]


def evaluate_model(
    model: AMNet,
    dataset: VideoFeatureDataset,
    cfg: Mapping[str, Any],
    device: torch.device,
    progress: bool = True,
    class_scores: ClassScores | None = None,
    topk: int = DEFAULT_TOPK,
) -> tuple[dict, EvaluationResult]:
    """Detections and the ActivityNet metric of ``model`` on ``dataset``.

    A one-class (class-agnostic) model is scored against the ground truth with every action
    of that class; with ``class_scores`` its detections are first fused with the video-level
    classes (:mod:`amnet.class_scores`), and the returned detections' labels index
    ``class_scores.names``, scored against the ground truth's own classes."""
    agnostic = len(dataset.class_names) == 1
    if class_scores is not None and not agnostic:
        raise AMNetError(
            f"video-level class scores need a class-agnostic model (dataset.num_classes: 1); "
            f"this one has {len(dataset.class_names)} classes"
        )
    if class_scores is not None:
        # Before inference: a video or class the classifier file lacks fails now, not at the end.
        class_scores.check_classes(dataset.videos)
        for video in dataset.videos:
            class_scores.of(video.video_id)
    items = (dataset[i] for i in range(len(dataset)))
    detections = detect_dataset(model, items, cfg, device, progress=progress, total=len(dataset))
    thresholds = cfg["test_cfg"]["tiou_thresholds"]
    if class_scores is not None:
        detections = fuse_results(detections, class_scores, topk)
        gt = {v.video_id: v for v in dataset.videos}
        return detections, evaluate_detection(gt, detections, class_scores.names, thresholds)
    if agnostic:
        gt = agnostic_ground_truth(dataset.videos, dataset.class_names[0])
    else:
        gt = {v.video_id: v for v in dataset.videos}
    return detections, evaluate_detection(gt, detections, dataset.class_names, thresholds)
