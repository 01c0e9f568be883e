"""amnet-train on CUDA as a user runs it: the Triton attention path under fp16 autocast, a run
killed and resumed, and the checkpoint opened on a CPU. Skips without a CUDA device.

With ``AMNET_CUDA_TRAIN_SUMMARY=path.json`` set (scripts/gpu_check.sh does), the test writes
what it measured there: the largest weight differences between runs, which show whether CUDA
training is deterministic on that machine and whether a resume ends where the run left alone
ends.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import interrupt_training_in_epoch, run_main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference over the model and EMA weights of two checkpoints."""
    worst = 0.0
    for weights in ("model", "ema"):
        for name, tensor in a[weights].items():
            diff = (tensor.double() - b[weights][name].double()).abs().max().item()
            worst = max(worst, diff)
    return worst


def test_training_on_cuda_resumes_and_runs_on_cpu(tmp_path, monkeypatch):
    data = tmp_path / "data"
    proc = run_main("amnet.cli.synth", "--out", str(data), "--preset", "tiny", "--videos", "6",
                    "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    args = ["--config", str(TINY), "--data", str(data), "--epochs", "2", "--device", "cuda",
            "--quiet"]  # fmt: skip

    def train(out: str) -> dict:
        proc = run_main("amnet.cli.train", *args, "--out", str(tmp_path / out))
        assert proc.returncode == 0, proc.stderr
        return torch.load(tmp_path / out / "last.pt", map_location="cpu", weights_only=True)

    whole = train("whole")
    log = (tmp_path / "whole" / "train.log").read_text()
    assert "device cuda, attention path triton, AMP True" in log, log

    interrupt_training_in_epoch(monkeypatch, 1)
    proc = run_main("amnet.cli.train", *args, "--out", str(tmp_path / "killed"))
    assert proc.returncode == 130, proc.stderr
    monkeypatch.undo()
    last = tmp_path / "killed" / "last.pt"
    proc = run_main("amnet.cli.train", *args, "--out", str(tmp_path / "killed"), "--resume",
                    str(last))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    again = train("again")

    noise = max_difference(whole, again)  # run to run, same seed: CUDA's own nondeterminism
    resume_gap = max_difference(whole, resumed)
    for ckpt in (whole, resumed, again):
        for tensor in ckpt["model"].values():
            assert torch.isfinite(tensor).all()

    # Trained on CUDA, evaluated on a CPU: the checkpoint carries no device.
    proc = run_main("amnet.cli.evaluate", "--ckpt", str(tmp_path / "whole" / "best.pt"),
                    "--data", str(data), "--subset", "test", "--device", "cpu", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    mAP = json.loads(proc.stdout.splitlines()[-1])["mAP"]
    assert np.all(np.isfinite(mAP))

    summary = {
        "device": torch.cuda.get_device_name(),
        "max_weight_difference_run_to_run": noise,
        "max_weight_difference_resumed_vs_whole": resume_gap,
        "test_mAP_on_cpu": mAP,
    }
    if target := os.environ.get("AMNET_CUDA_TRAIN_SUMMARY"):
        Path(target).write_text(json.dumps(summary, indent=2) + "\n")
    # A resume restores every random stream, so it ends where the run left alone ends, up to
    # the run-to-run noise of CUDA's kernels (none where they are deterministic).
    assert resume_gap <= 10 * noise, summary
