"""AMNet gives the same loss and gradients through the Triton kernel (interpreted on this CPU)
as through the PyTorch reference: the kernel drops into the model without changing it."""

import pytest
import torch

pytest.importorskip("triton")

from amnet.config import DEFAULTS
from amnet.model import AMNet, AMNetLoss


def loss_and_grads(monkeypatch, backend: str):
    monkeypatch.setenv("AMNET_ATTENTION", backend)
    torch.manual_seed(0)
    model = AMNet(
        input_dim=16,
        num_classes=3,
        embd_dim=32,
        head_dim=32,
        n_heads=4,
        short_window=5,
        n_levels=3,
        regression_range=[[0, 4], [4, 8], [8, 10000]],
    ).train()
    criterion = AMNetLoss(model, DEFAULTS["train_cfg"]).train()
    feats = torch.rand(2, 40, 16)
    lengths = torch.tensor([40, 23])
    segs = [torch.tensor([[4.0, 12.0], [20.0, 33.0]]), torch.tensor([[2.0, 9.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    losses = criterion(model(feats, lengths), segs, labels)
    losses["final_loss"].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return {k: v.detach() for k, v in losses.items()}, grads


def test_amnet_loss_and_gradients_match_between_reference_and_triton(monkeypatch):
    ref_losses, ref_grads = loss_and_grads(monkeypatch, "reference")
    tri_losses, tri_grads = loss_and_grads(monkeypatch, "triton")
    for key, value in ref_losses.items():
        assert torch.allclose(value, tri_losses[key], atol=1e-5), key
    for name, grad in ref_grads.items():
        assert torch.allclose(grad, tri_grads[name], atol=1e-4, rtol=1e-3), name
    attention_grads = [n for n in ref_grads if "qkv" in n or "kv" in n]
    assert attention_grads and all(ref_grads[n].abs().sum() > 0 for n in attention_grads)
