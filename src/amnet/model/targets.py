"""Pyramid points and the assignment of ground-truth actions to them (DESIGN §4.7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pyramid_points(
    length: int, num_levels: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres (level-0 snippets), strides and level index of every point, levels concatenated.

    ``length`` is the padded sequence length, divisible by ``2 ** (num_levels - 1)``.
    """
    centers, strides, levels = [], [], []
    for level in range(num_levels):
        stride = 2**level
        n = length // stride
        centers.append(torch.arange(n, device=device, dtype=torch.float32) * stride)
        strides.append(torch.full((n,), float(stride), device=device))
        levels.append(torch.full((n,), level, device=device, dtype=torch.int64))
    return torch.cat(centers), torch.cat(strides), torch.cat(levels)


def assign_targets(
    centers: torch.Tensor,
    strides: torch.Tensor,
    levels: torch.Tensor,
    segments: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    regression_range: Sequence[Sequence[float]],
    center_radius: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classification targets ``[P, K]`` (one-hot or zero) and regression targets ``[P, 2]``.

    A point takes an action when it lies inside it, within ``center_radius`` strides of its
    centre, and the larger of its two distances to the action's bounds falls in the level's
    regression range. Ties go to the shortest action. Regression targets are the distances to
    start and end divided by the point's stride.
    """
    num_points = centers.shape[0]
    if segments.numel() == 0:
        return centers.new_zeros(num_points, num_classes), centers.new_zeros(num_points, 2)
    ranges = torch.as_tensor(regression_range, dtype=torch.float32, device=centers.device)[levels]
    c = centers[:, None]
    start, end = segments[None, :, 0], segments[None, :, 1]
    left, right = c - start, end - c
    mid = 0.5 * (start + end)
    radius = center_radius * strides[:, None]
    inside_center = (c >= torch.maximum(start, mid - radius)) & (
        c <= torch.minimum(end, mid + radius)
    )
    inside = (left > 0) & (right > 0) & inside_center
    reach = torch.maximum(left, right)
    in_range = (reach >= ranges[:, :1]) & (reach <= ranges[:, 1:])
    lengths = (end - start).expand(num_points, -1)
    cost = torch.where(inside & in_range, lengths, torch.full_like(lengths, float("inf")))
    best_cost, best = cost.min(dim=1)
    positive = torch.isfinite(best_cost)
    cls_targets = torch.zeros(num_points, num_classes, device=centers.device)
    cls_targets[positive, labels[best[positive]]] = 1.0
    reg = torch.stack(
        [left.gather(1, best[:, None])[:, 0], right.gather(1, best[:, None])[:, 0]], dim=-1
    )
    reg = reg / strides[:, None] * positive[:, None]
    return cls_targets, reg


def foreground_mask(segments: torch.Tensor, length: int) -> torch.Tensor:
    """1 for snippets whose centre lies inside any action (the actionness target)."""
    t = torch.arange(length, device=segments.device, dtype=torch.float32)[:, None]
    if segments.numel() == 0:
        return torch.zeros(length, device=segments.device)
    return ((t >= segments[None, :, 0]) & (t <= segments[None, :, 1])).any(dim=1).float()
