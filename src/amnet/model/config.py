"""The model's configuration: one typed record, the single source of its defaults.

A YAML config's ``model:`` section maps onto :class:`ModelConfig` field by field; an unknown
key or a bad value is an error that names it (see :mod:`amnet.config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

OFFSET_ACTIVATIONS = ("softplus", "relu")


def is_int(v: Any) -> bool:
    """An int that is not a bool (YAML's ``yes`` is a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_ranges(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(r, list) and len(r) == 2 and all(is_number(x) for x in r) for r in v
    )


# Field annotation (text: the module uses postponed annotations) -> test, and its name in errors.
_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": is_int,
    "float": is_number,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list[list[float]]": _is_ranges,
}
_TYPE_NAMES = {
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "str": "text",
    "list[list[float]]": "a list of [lo, hi] number pairs",
}


def _thumos_ranges() -> list[list[float]]:
    return [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]]


@dataclass(frozen=True)
class ModelConfig:
    """AMNet's architecture (defaults: the paper's THUMOS14 model)."""

    embd_dim: int = 512  # D, the width of the embedding, AME and GAM
    embd_kernel_size: int = 3
    use_ame: bool = True  # Action Masking Encoder (False: the ablation without it)
    n_ame_layers: int = 2
    n_heads: int = 4  # per attention layer; GAM gives half to the long group, half to the short
    mlp_ratio: int = 4
    dropout: float = 0.0
    use_gam: bool = True  # Group Attention Module (False: plain global self-attention)
    short_window: int = 19  # snippets visible to a short-group head (centred)
    n_levels: int = 6  # pyramid levels (stride 2 between them)
    head_dim: int = 512  # width of the classification and regression trunks
    head_num_layers: int = 3
    head_kernel_size: int = 3
    # Per level [lo, hi]: the farther bound of an action, in level-0 snippets, from a point.
    regression_range: list[list[float]] = field(default_factory=_thumos_ranges)
    center_sample_radius: float = 1.5  # in level strides
    prior_prob: float = 0.01  # initial class probability (focal-loss bias)
    offset_activation: str = "softplus"  # "relu": the head of checkpoint format 1

    def problems(self) -> list[str]:
        """What is wrong with these values (empty when they are usable): types first (a YAML
        ``"64"`` or ``yes`` where a number or a boolean belongs), then ranges."""
        wrong = [
            f"model.{f.name} must be {_TYPE_NAMES[str(f.type)]}, got {getattr(self, f.name)!r}"
            for f in fields(self)
            if not _TYPE_CHECKS[str(f.type)](getattr(self, f.name))
        ]
        if wrong:
            return wrong
        checks = [
            (self.embd_dim > 0 and self.embd_dim % 2 == 0, "model.embd_dim must be a positive even number"),
            (self.n_heads >= 2 and self.n_heads % 2 == 0, "model.n_heads must be an even number >= 2 (half long, half short)"),
            (self.embd_dim % (2 * self.n_heads) == 0, "model.embd_dim must be divisible by 2 * model.n_heads"),
            (self.n_levels >= 1, "model.n_levels must be >= 1"),
            (len(self.regression_range) == self.n_levels, "model.regression_range needs one [lo, hi] per level"),
            (self.short_window >= 1, "model.short_window must be >= 1"),
            (self.offset_activation in OFFSET_ACTIVATIONS, "model.offset_activation must be 'softplus' or 'relu'"),
            (self.head_num_layers >= 1, "model.head_num_layers must be >= 1"),
            (self.embd_kernel_size % 2 == 1 and self.head_kernel_size % 2 == 1, "model kernel sizes must be odd"),
            (0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)"),
            (0.0 < self.prior_prob < 1.0, "model.prior_prob must be in (0, 1)"),
            (self.n_ame_layers >= 0, "model.n_ame_layers must be >= 0"),
            (self.mlp_ratio >= 1, "model.mlp_ratio must be >= 1"),
            (self.head_dim >= 1, "model.head_dim must be >= 1"),
            (self.center_sample_radius >= 0, "model.center_sample_radius must be >= 0"),
            (all(0 <= lo < hi for lo, hi in self.regression_range), "model.regression_range needs 0 <= lo < hi at every level"),
        ]  # fmt: skip
        return [message for ok, message in checks if not ok]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
