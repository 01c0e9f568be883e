import pytest
import torch
from torch.nn import functional as F

from amnet.checkpoint import load_model, save_checkpoint
from amnet.config import DEFAULTS, config_from_dict
from amnet.errors import AMNetError
from amnet.model import AMNet, AMNetLoss
from amnet.model.heads import join_levels
from amnet.model.targets import assign_targets, foreground_mask, pyramid_points

SMALL = {"embd_dim": 32, "head_dim": 32, "n_heads": 4, "short_window": 5}


def small_model(**overrides) -> AMNet:
    torch.manual_seed(0)
    return AMNet(input_dim=16, num_classes=3, **{**SMALL, **overrides}).eval()


def valid_outputs(model, feats, lengths):
    out = model(feats, lengths)
    return [
        (out.cls_logits[b][out.point_mask[b]], out.offsets[b][out.point_mask[b]])
        for b in range(feats.shape[0])
    ]


@pytest.mark.parametrize(
    "overrides", [{}, {"use_ame": False}, {"use_gam": False}, {"use_ame": False, "use_gam": False}]
)
def test_padding_never_leaks(overrides):
    model = small_model(**overrides)
    feats = torch.rand(2, 150, 16)
    lengths = torch.tensor([150, 61])
    with torch.no_grad():
        batched = valid_outputs(model, feats, lengths)
        alone = valid_outputs(model, feats[1:, :61], lengths[1:])
        # Garbage in the padded part must not change anything either.
        noisy = feats.clone()
        noisy[1, 61:] = 100.0
        noisy_out = valid_outputs(model, noisy, lengths)
    for got in (batched[1], noisy_out[1]):
        assert torch.allclose(got[0], alone[0][0], atol=1e-5)
        assert torch.allclose(got[1], alone[0][1], atol=1e-5)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_heads_give_each_level_what_a_pass_over_that_level_alone_gives(kernel_size):
    """The heads run all levels as one joined sequence: no level may read another's rows, here
    with every row of every level valid (no padding between levels to hide a leak)."""
    model = small_model(head_kernel_size=kernel_size)
    with torch.no_grad():
        for scale in model.reg_head.scales:
            scale.scale.uniform_(0.5, 2.0)  # a distinct scale per level
        levels = [torch.randn(2, 64 >> level, 32) for level in range(model.n_levels)]
        masks = [torch.ones(2, 64 >> level, 1) for level in range(model.n_levels)]
        joined = join_levels(levels, masks, model.cls_head.gap)
        logits, offsets = model.cls_head(joined), model.reg_head(joined)
        start = 0
        for level, (x, mask) in enumerate(zip(levels, masks, strict=True)):
            end = start + x.shape[1]
            one = join_levels([x], [mask], model.cls_head.gap)
            alone = model.cls_head.run_levels(one)
            assert torch.allclose(logits[:, start:end], alone, atol=1e-6)
            raw = model.reg_head.run_levels(one) * model.reg_head.scales[level].scale
            assert torch.allclose(offsets[:, start:end], F.softplus(raw), atol=1e-6)
            start = end
        assert start == logits.shape[1] == offsets.shape[1]


def test_output_shapes_and_point_count():
    model = small_model()
    with torch.no_grad():
        scores, segments = model.predict(torch.rand(1, 100, 16), torch.tensor([100]))
    # 100 → padded to 128: 128 + 64 + 32 + 16 + 8 + 4 points.
    assert scores.shape == (1, 252, 3) and segments.shape == (1, 252, 2)
    assert (scores >= 0).all() and (scores <= 1).all()
    out = model(torch.rand(1, 100, 16), torch.tensor([100]))
    assert int(out.point_mask.sum()) == 100 + 50 + 25 + 13 + 7 + 4
    assert torch.equal(
        scores[0, ~out.point_mask[0]], torch.zeros_like(scores[0, ~out.point_mask[0]])
    )


def test_assignment_follows_ranges_and_centre_sampling():
    centers, strides, levels = pyramid_points(64, 3)
    # One action [10, 16]: reach at point 13 is 3 → level 0 (range [0, 4]).
    segs = torch.tensor([[10.0, 16.0]])
    cls, reg = assign_targets(
        centers, strides, levels, segs, torch.tensor([2]), 3, [[0, 4], [4, 8], [8, 1e4]], 1.5
    )
    pos = cls.sum(1) > 0
    # Level 0 (range [0, 4], radius 1.5): 12, 13, 14. Level 1 (stride 2, range [4, 8], radius 3):
    # 12 and 14 reach exactly 4; 10 and 16 sit on the action's bounds and are not inside it.
    assert list(zip(levels[pos].tolist(), centers[pos].tolist(), strict=True)) == [
        (0, 12.0),
        (0, 13.0),
        (0, 14.0),
        (1, 12.0),
        (1, 14.0),
    ]
    assert cls[pos, 2].eq(1).all()
    assert reg[pos].tolist() == [[2.0, 4.0], [3.0, 3.0], [4.0, 2.0], [1.0, 2.0], [2.0, 1.0]]


def test_ties_go_to_the_shortest_action():
    centers, strides, levels = pyramid_points(32, 1)
    segs = torch.tensor([[0.0, 8.0], [3.0, 5.0]])
    cls, reg = assign_targets(
        centers, strides, levels, segs, torch.tensor([0, 1]), 2, [[0, 100]], 100.0
    )
    assert cls[4].tolist() == [0.0, 1.0]  # the point at 4 lies in both; the short one wins
    assert reg[4].tolist() == [1.0, 1.0]


def test_foreground_mask():
    fg = foreground_mask(torch.tensor([[2.0, 4.0]]), 8)
    assert fg.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize("overrides", [{}, {"use_ame": False}, {"use_gam": False}])
def test_loss_is_finite_and_trains_every_part(overrides):
    model = small_model(**overrides).train()
    criterion = AMNetLoss(model, DEFAULTS["train_cfg"]).train()
    feats, lengths = torch.rand(2, 96, 16), torch.tensor([96, 40])
    segs = [torch.tensor([[10.0, 30.0], [50.0, 60.0]]), torch.tensor([[5.0, 20.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    losses = criterion(model(feats, lengths), segs, labels)
    assert torch.isfinite(losses["final_loss"])
    assert ("mask_loss" in losses) == (model.ame is not None)
    losses["final_loss"].backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    assert not no_grad


def test_a_video_without_actions_trains():
    model = small_model().train()
    criterion = AMNetLoss(model, DEFAULTS["train_cfg"]).train()
    losses = criterion(
        model(torch.rand(1, 64, 16), torch.tensor([64])),
        [torch.zeros(0, 2)],
        [torch.zeros(0, dtype=torch.int64)],
    )
    assert torch.isfinite(losses["final_loss"])
    losses["final_loss"].backward()


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    cfg = config_from_dict({"dataset": {"input_dim": 16, "num_classes": 3}, "model": SMALL})
    model = AMNet.from_config(cfg)
    save_checkpoint(
        tmp_path / "ok.pt",
        config=cfg,
        class_names=["a", "b", "c"],
        model=model.state_dict(),
        ema=None,
    )
    loaded, cfg2, names = load_model(tmp_path / "ok.pt")
    assert names == ["a", "b", "c"] and cfg2 == cfg
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    with pytest.raises(AMNetError, match="not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(AMNetError, match="not a readable checkpoint"):
        load_model(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(AMNetError, match="not an AMNet checkpoint"):
        load_model(tmp_path / "other.pt")
    other_arch = dict(cfg, model={**cfg["model"], "embd_dim": 64, "head_dim": 64})
    save_checkpoint(
        tmp_path / "mismatch.pt",
        config=other_arch,
        class_names=["a", "b", "c"],
        model=model.state_dict(),
    )
    with pytest.raises(AMNetError, match="do not match the architecture"):
        load_model(tmp_path / "mismatch.pt")
    ok = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(ok[: len(ok) // 2])
    with pytest.raises(AMNetError, match=r"not a readable checkpoint \(truncated or damaged"):
        load_model(tmp_path / "cut.pt")
