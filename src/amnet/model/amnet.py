"""AMNet: Action-aware Masking Network with Group-based Attention.

Read top to bottom: features are embedded (Conv1d ×2), refined by the Action Masking Encoder
(AME), then a 6-level pyramid of Group Attention Module (GAM) blocks with masked stride-2
max-pooling between levels feeds shared classification and regression heads. ``forward``
returns raw head outputs (training); ``predict`` returns what the exported graph returns:
per-point class probabilities and decoded segments in snippet units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from amnet.model.ame import ActionMaskingEncoder, action_contrastive_loss
from amnet.model.blocks import masked_max_pool
from amnet.model.config import ModelConfig
from amnet.model.embedding import FeatureEmbedding
from amnet.model.gam import GAMBlock
from amnet.model.heads import ClassificationHead, RegressionHead, join_levels
from amnet.model.losses import diou_loss_1d, sigmoid_focal_loss
from amnet.model.targets import assign_targets, foreground_mask, pyramid_points


@dataclass
class AMNetOutput:
    cls_logits: torch.Tensor  # [B, P, K]
    offsets: torch.Tensor  # [B, P, 2], distances to start/end in units of the point's stride
    point_mask: torch.Tensor  # [B, P] bool, points inside the valid length
    centers: torch.Tensor  # [P] level-0 snippet index of each point
    strides: torch.Tensor  # [P]
    levels: torch.Tensor  # [P]
    actionness_logits: torch.Tensor | None  # [B, T] (None without AME)
    encoded: torch.Tensor | None  # [B, T, D] AME output (None without AME)
    mask: torch.Tensor  # [B, T, 1] float, padded length


class AMNet(nn.Module):
    # Buffers, declared for type checkers (nn.Module resolves them dynamically).
    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        config: ModelConfig | None = None,
        **overrides: Any,
    ) -> None:
        """``config`` (default: the paper's model) with any of its fields overridden by name."""
        super().__init__()
        c = replace(config or ModelConfig(), **overrides)
        problems = c.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.config = c
        self.num_classes = num_classes
        self.n_levels = c.n_levels
        self.regression_range = [list(map(float, r)) for r in c.regression_range]
        self.center_sample_radius = c.center_sample_radius
        # Per-channel input standardisation, set from the training split before training
        # (identity until then). Raw I3D-style features are non-negative with a large shared
        # offset that otherwise dominates the first LayerNorm and stalls learning.
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_std", torch.ones(input_dim))
        self.embedding = FeatureEmbedding(input_dim, c.embd_dim, c.embd_kernel_size)
        self.ame = (
            ActionMaskingEncoder(c.embd_dim, c.n_ame_layers, c.n_heads, c.mlp_ratio, c.dropout)
            if c.use_ame
            else None
        )
        self.pyramid = nn.ModuleList(
            GAMBlock(
                c.embd_dim, c.n_heads, c.short_window, c.mlp_ratio, c.dropout, grouped=c.use_gam
            )
            for _ in range(c.n_levels)
        )
        self.cls_head = ClassificationHead(
            c.embd_dim, c.head_dim, num_classes, c.head_num_layers, c.head_kernel_size, c.prior_prob
        )
        self.reg_head = RegressionHead(
            c.embd_dim, c.head_dim, c.n_levels, c.head_num_layers, c.head_kernel_size,
            c.offset_activation,
        )  # fmt: skip

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AMNet:
        return cls(
            cfg["dataset"]["input_dim"], cfg["dataset"]["num_classes"], ModelConfig(**cfg["model"])
        )

    @torch.no_grad()
    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-3))

    @property
    def pad_multiple(self) -> int:
        return 2 ** (self.n_levels - 1)

    def embed(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pad ``feats`` ``[B, T, C]`` to the pyramid's multiple, standardise, embed.

        Returns the embedding ``[B, T', D]``, the valid mask ``[B, T', 1]`` and ``lengths``
        as int64."""
        t = feats.shape[1]
        padded = (t + self.pad_multiple - 1) // self.pad_multiple * self.pad_multiple
        x = F.pad(feats, (0, 0, 0, padded - t))
        lengths = lengths.to(torch.int64)
        mask = (
            (torch.arange(padded, device=x.device)[None, :] < lengths[:, None])
            .unsqueeze(-1)
            .to(x.dtype)
        )
        x = (x - self.input_mean) / self.input_std * mask
        return self.embedding(x, mask), mask, lengths

    def encode(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The features the pyramid starts from: ``(embedded, encoded, actionness_logits,
        mask, lengths)``; without an AME, ``encoded`` is the embedding and the logits None."""
        embedded, mask, lengths = self.embed(feats, lengths)
        if self.ame is None:
            return embedded, embedded, None, mask, lengths
        encoded, actionness = self.ame(embedded, mask, lengths)
        return embedded, encoded, actionness, mask, lengths

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> AMNetOutput:
        """``feats`` ``[B, T, C]`` (any T; padded inside to the pyramid's multiple), ``lengths`` ``[B]``."""
        _, x, actionness, mask, lengths = self.encode(feats, lengths)
        encoded = x if self.ame is not None else None
        padded = x.shape[1]

        features, masks = [], []
        level_mask, level_lengths = mask, lengths
        for level, block in enumerate(self.pyramid):
            if level > 0:
                x, level_mask, level_lengths = masked_max_pool(x, level_mask, level_lengths)
            x = block(x, level_mask, level_lengths)
            features.append(x)
            masks.append(level_mask)

        # Both heads run all levels in one pass over the same joined sequence (heads.py).
        joined = join_levels(features, masks, self.cls_head.gap)
        centers, strides, levels = pyramid_points(padded, self.n_levels, x.device)
        return AMNetOutput(
            cls_logits=self.cls_head(joined),
            offsets=self.reg_head(joined),
            point_mask=joined.point_mask.squeeze(-1) > 0,
            centers=centers,
            strides=strides,
            levels=levels,
            actionness_logits=actionness,
            encoded=encoded,
            mask=mask,
        )

    def predict(
        self, feats: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities ``[B, P, K]`` (0 at padded points) and segments ``[B, P, 2]``
        in snippet units: the exported graph's outputs."""
        out = self(feats, lengths)
        scores = torch.sigmoid(out.cls_logits) * out.point_mask.unsqueeze(-1).to(
            out.cls_logits.dtype
        )
        step = out.offsets * out.strides[None, :, None]
        # centre - start offset, centre + end offset, as one signed sum: the same numbers
        # (negation is exact), and a graph OpenVINO can compile with static shapes when the
        # model is statically quantized (per-column gathers broke its shape inference there).
        sign = torch.tensor([-1.0, 1.0], dtype=step.dtype, device=step.device)
        segments = out.centers[None, :, None] + step * sign
        return scores, segments


class AMNetLoss(nn.Module):
    """Focal + DIoU + actionness BCE + action contrastive loss (DESIGN §4.7)."""

    loss_norm: torch.Tensor  # a buffer: the EMA of the positive count

    def __init__(self, model: AMNet, train_cfg: Mapping[str, Any]) -> None:
        super().__init__()
        # Only what target assignment needs, not the model (which would become a submodule).
        self.num_classes = model.num_classes
        self.regression_range = [list(r) for r in model.regression_range]
        self.center_sample_radius = model.center_sample_radius
        self.cfg = dict(train_cfg)
        self.register_buffer("loss_norm", torch.tensor(float(train_cfg["init_loss_norm"])))

    def forward(
        self, out: AMNetOutput, segments: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        cls_list, reg_list = zip(
            *(
                assign_targets(
                    out.centers, out.strides, out.levels, seg.to(out.centers.device), lab.to(out.centers.device),
                    self.num_classes, self.regression_range, self.center_sample_radius,
                )
                for seg, lab in zip(segments, labels, strict=True)
            ),
            strict=True,
        )  # fmt: skip
        cls_targets = torch.stack(cls_list)
        reg_targets = torch.stack(reg_list)
        valid = out.point_mask
        positive = (cls_targets.sum(-1) > 0) & valid
        num_pos = positive.sum().item()
        if self.training:
            m = cfg["loss_norm_momentum"]
            self.loss_norm.mul_(m).add_((1 - m) * max(num_pos, 1))
        norm = self.loss_norm.clamp_min(1.0)

        logits = out.cls_logits.float()
        cls_loss = (
            sigmoid_focal_loss(
                logits[valid], cls_targets[valid], cfg["focal_alpha"], cfg["focal_gamma"]
            ).sum()
            / norm
        )
        if num_pos:
            reg_loss = (
                diou_loss_1d(out.offsets.float()[positive], reg_targets[positive]).sum() / norm
            )
        else:
            reg_loss = out.offsets.sum() * 0.0
        losses = {"cls_loss": cls_loss, "reg_loss": reg_loss}
        total = cls_loss + cfg["reg_loss_weight"] * reg_loss

        if out.actionness_logits is not None and out.encoded is not None:
            length = out.mask.shape[1]
            fg = torch.stack([foreground_mask(seg.to(out.mask.device), length) for seg in segments])
            snippet_valid = out.mask.squeeze(-1)
            bce = F.binary_cross_entropy_with_logits(
                out.actionness_logits.float(), fg, reduction="none"
            )
            mask_loss = (bce * snippet_valid).sum() / snippet_valid.sum().clamp_min(1.0)
            ctr_loss = action_contrastive_loss(
                out.encoded.float(),
                out.actionness_logits.float(),
                fg,
                out.mask,
                cfg["ctr_temperature"],
            )
            losses["mask_loss"], losses["ctr_loss"] = mask_loss, ctr_loss
            total = total + cfg["lambda_mask"] * mask_loss + cfg["lambda_ctr"] * ctr_loss
        losses["final_loss"] = total
        return losses
