"""Test set-up. The Triton interpreter must be switched on before triton is first imported,
so that the kernels run on this CPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest worker per core (scripts/test.sh runs ``-n auto``): one math thread each, set
    # before torch is imported; an oversubscribed torch thread pool is many times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The tiny synthetic set (``amnet-synth --preset tiny --seed 0``: 80 training and 40 test
    videos of 96-300 snippets, 5 classes), written once per session and read-only after."""
    from amnet.cli.synth import main as synth_main

    out = tmp_path_factory.mktemp("tiny_dataset")
    assert synth_main(["--out", str(out), "--preset", "tiny", "--seed", "0", "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict[str, Path]:
    """An initialised tiny AMNet (``configs/tiny_cpu.yaml``, seed 0, the tiny preset's class
    names) as a checkpoint and as its ONNX export; for tests of the command line and runtime
    that need a real model but not a trained one."""
    import torch

    from amnet.checkpoint import save_checkpoint
    from amnet.config import load_config
    from amnet.export.to_onnx import export_onnx
    from amnet.model import AMNet
    from amnet.synth import preset_class_names

    base = tmp_path_factory.mktemp("tiny_model")
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    torch.manual_seed(0)
    net = AMNet.from_config(cfg)
    ckpt = base / "tiny.pt"
    save_checkpoint(
        ckpt, config=cfg, class_names=preset_class_names("tiny"), model=net.state_dict(), ema=None
    )
    return {"pt": ckpt, "onnx": export_onnx(ckpt, base / "tiny.onnx", parity=False).path}


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny AMNet trained for 2 epochs on 6 synthetic videos: its checkpoint and ONNX export."""
    import torch

    from amnet.config import load_config
    from amnet.export.to_onnx import export_onnx
    from amnet.synth import draw_layout, preset_class_names, write_dataset
    from amnet.train import train

    base = tmp_path_factory.mktemp("deploy_models")
    data = base / "data"
    write_dataset(data, draw_layout("tiny", videos=6, seed=3), preset_class_names("tiny"), progress=False)  # fmt: skip
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    cfg["train_cfg"]["eval_every"] = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, data, base / "run", epochs=2, progress=False)
    finally:
        torch.set_num_threads(threads)
    ckpt = base / "run" / "last.pt"
    onnx = export_onnx(ckpt, base / "model.onnx").path
    return {"pt": ckpt, "onnx": onnx, "data": data}


@pytest.fixture(scope="session")
def onnx_detector(models):
    from amnet.deploy import Detector

    return Detector(models["onnx"], intra_op_threads=1)


@pytest.fixture(scope="session")
def torch_detector(models):
    from amnet.deploy import Detector

    return Detector(models["pt"])
