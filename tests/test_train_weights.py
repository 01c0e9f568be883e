"""Which weights a run ships: the EMA warms up (a short run is not dominated by its random start),
best.pt names the set validation chose, and loading follows that choice; format-1 checkpoints
(ReLU offsets) still load as what they are."""

import json
from pathlib import Path

import pytest
import torch

from amnet.checkpoint import chosen_weights, load_model, read_checkpoint, save_checkpoint
from amnet.config import load_config
from amnet.data import make_dataset
from amnet.evaluation import evaluate_model
from amnet.train import ModelEma, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def test_ema_follows_a_short_run_and_settles_at_its_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEma(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(100):
        ema.update(model)
    # A fixed 0.999 would still hold 90% of the initial 0 after 100 steps (1 - 0.999**100).
    assert ema.module.weight.item() > 0.9
    ema.updates = 1_000_000
    assert ema.current_decay() == pytest.approx(0.999)


def test_best_checkpoint_names_the_weights_validation_chose(models, tmp_path):
    # The small set of the shared trained model (6 videos a split): the choice between the two
    # weight sets is what is checked, not how good either is.
    cfg = load_config(TINY)
    cfg["train_cfg"]["eval_every"] = 1
    summary = train(cfg, models["data"], tmp_path, epochs=2, seed=0, progress=False)
    validated = [h for h in summary["history"] if "val_ema_mAP" in h]
    assert len(validated) == 2
    best = max(validated, key=lambda h: h["val_average_mAP"])
    ckpt = read_checkpoint(tmp_path / "best.pt")
    expected = "ema" if best["val_ema_mAP"] >= best["val_raw_mAP"] else "raw"
    assert ckpt["weights"] == expected
    assert ckpt["best_map"] == pytest.approx(max(best["val_ema_mAP"], best["val_raw_mAP"]))
    assert "EMA" in (tmp_path / "train.log").read_text()
    # Loading runs the named set unless told otherwise.
    model, _, _ = load_model(tmp_path / "best.pt")
    want = ckpt["ema"] if expected == "ema" else ckpt["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, want[key]), key
    raw, _, _ = load_model(tmp_path / "best.pt", use_ema=False)
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in raw.state_dict().items())
    # The loaded checkpoint evaluates to the figure validation recorded for it.
    _, cfg, names = load_model(tmp_path / "best.pt")
    val = make_dataset(cfg, models["data"], "val_split", False, names)
    _, result = evaluate_model(model, val, cfg, "cpu", progress=False)
    assert result.average_mAP == pytest.approx(ckpt["best_map"], abs=1e-9)


def test_format_1_checkpoints_load_with_the_relu_head(tmp_path):
    cfg = load_config(TINY)
    cfg["model"]["offset_activation"] = "relu"
    from amnet.model import AMNet

    torch.manual_seed(0)
    old = AMNet.from_config(cfg).eval()
    stored = json.loads(json.dumps(cfg))
    del stored["model"]["offset_activation"]  # format 1 had no such key
    path = tmp_path / "old.pt"
    save_checkpoint(
        path, config=stored, class_names=[f"c{i}" for i in range(5)], model=old.state_dict()
    )
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 1
    torch.save(raw, path)
    model, cfg_loaded, _ = load_model(path)
    assert cfg_loaded["model"]["offset_activation"] == "relu"
    x, lengths = torch.rand(1, 64, 2048), torch.tensor([64])
    with torch.no_grad():
        assert torch.equal(model(x, lengths).offsets, old(x, lengths).offsets)


@pytest.mark.parametrize("version", [0, 3, 99, "2", None, True])
def test_unknown_checkpoint_format_versions_are_refused(tmp_path, version):
    path = tmp_path / "x.pt"
    save_checkpoint(path, config={}, class_names=[], model={})
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = version
    torch.save(raw, path)
    from amnet.errors import AMNetError

    with pytest.raises(AMNetError, match="format_version"):
        read_checkpoint(path)


def test_chosen_weights_defaults_to_ema():
    ckpt = {"model": {"a": 1}, "ema": {"a": 2}}
    assert chosen_weights(ckpt) is ckpt["ema"]
    assert chosen_weights({**ckpt, "weights": "raw"}) is ckpt["model"]
    assert chosen_weights({**ckpt, "weights": "raw"}, use_ema=True) is ckpt["ema"]
    assert chosen_weights({"model": {"a": 1}}) == {"a": 1}
