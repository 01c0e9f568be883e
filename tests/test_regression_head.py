"""The regression head cannot die: at initialisation, for every shipped config and several seeds,
both offsets (start and end) are positive and respond to their output layer at most valid points.

Under the old ReLU head one offset had a pre-activation of the same (negative) sign at nearly every
point for many (config, seed) pairs, got no gradient, and the model never learned boundaries.
"""

from pathlib import Path

import pytest
import torch

from amnet.config import load_config
from amnet.model import AMNet
from amnet.model.heads import level_rows

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    [*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/ablations/*.yaml")],
    key=lambda p: str(p),
)
SEEDS = (0, 1, 2)


def offset_slopes(model: AMNet, feats: torch.Tensor, lengths: torch.Tensor):
    """Offsets ``[B, P, 2]`` and, per point, d offset_k / d bias_k of the output layer, with the
    valid-point mask.

    The bias adds to the output layer's result at every point and all that follows is pointwise
    (level scale, activation, mask), so d offset / d bias at a point is the gradient with respect
    to that point's pre-activation: one forward pass, and backward passes through that tail only.
    """
    pre: list[torch.Tensor] = []

    def keep(module, inputs, output):  # the output layer's result, all levels joined
        leaf = output.detach().requires_grad_()
        pre.append(leaf)
        return leaf

    model.requires_grad_(False)
    handle = model.reg_head.out.conv.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            out = model(feats, lengths)
    finally:
        handle.remove()
    assert len(pre) == 1
    padded = -(-feats.shape[1] // model.pad_multiple) * model.pad_multiple
    rows = level_rows([padded // 2**level for level in range(model.n_levels)], model.reg_head.gap,
                      feats.device)  # fmt: skip
    slopes = []
    for k in range(2):
        (grad,) = torch.autograd.grad(out.offsets[..., k].sum(), pre, retain_graph=True)
        # conv layout [B, 2, T]; the rows between levels dropped
        slopes.append(grad[:, k, :].index_select(1, rows))
    return out.offsets.detach(), torch.stack(slopes, -1), out.point_mask


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_both_offsets_are_alive_at_initialisation(config):
    cfg = load_config(config)
    t = 96  # a short crop keeps D = 1024 quick; the head's behaviour does not depend on T
    for seed in SEEDS:
        torch.manual_seed(seed)
        cfg["dataset"]["max_seq_len"] = 2 ** (cfg["model"]["n_levels"] - 1)
        model = AMNet.from_config(cfg).eval()
        # Non-negative, I3D-like inputs with a shared offset, as the real features are.
        feats = torch.rand(2, t, cfg["dataset"]["input_dim"]) * 0.4
        model.set_input_statistics(feats.mean((0, 1)), feats.std((0, 1)))
        lengths = torch.tensor([t, t - 17])
        offsets, slopes, valid = offset_slopes(model, feats, lengths)
        for k, side in enumerate(("start", "end")):
            o, s = offsets[..., k][valid], slopes[..., k][valid]
            positive = (o > 0.05).float().mean().item()
            responsive = (s > 0.05).float().mean().item()
            assert positive > 0.9 and responsive > 0.9, (
                f"{config.stem} seed {seed}: {side} offset positive at {positive:.0%}, "
                f"with slope > 0.05 at {responsive:.0%} of valid points"
            )
        assert (offsets[~valid] == 0).all(), "padded points must give zero offsets"


def test_relu_head_can_be_dead_which_is_why_it_is_not_the_default():
    """The measurement behind the choice: with the ReLU head some (config, seed) pairs start with
    an offset that is zero, with zero slope, at almost every valid point."""
    cfg = load_config(ROOT / "configs" / "thumos14_i3d.yaml")
    cfg["model"]["offset_activation"] = "relu"
    dead = 0
    for seed in range(8):
        torch.manual_seed(seed)
        model = AMNet.from_config(cfg).eval()
        torch.manual_seed(100 + seed)
        feats = torch.rand(1, 64, 2048) * 0.4
        model.set_input_statistics(feats.mean((0, 1)), feats.std((0, 1)))
        _, slopes, valid = offset_slopes(model, feats, torch.tensor([64]))
        alive = (slopes[valid] > 0).float().mean(0)
        dead += int((alive < 0.1).any())
    print(f"{dead} of 8 seeds start with a dead offset under ReLU")
    assert dead >= 1
