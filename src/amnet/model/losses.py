"""Losses: sigmoid focal loss for classes, DIoU for segments."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Elementwise focal loss (summed by the caller)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def diou_loss_1d(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Distance-IoU loss between segments given as (distance to start, distance to end) of the
    same point, ``[N, 2]`` each; returns ``[N]``."""
    pl, pr = pred[:, 0], pred[:, 1]
    tl, tr = target[:, 0], target[:, 1]
    inter = torch.minimum(pl, tl) + torch.minimum(pr, tr)
    union = (pl + pr) + (tl + tr) - inter
    iou = inter / union.clamp_min(eps)
    enclosing = torch.maximum(pl, tl) + torch.maximum(pr, tr)
    centre_gap = 0.5 * ((pr - pl) - (tr - tl))
    return 1.0 - iou + centre_gap.square() / enclosing.square().clamp_min(eps)
