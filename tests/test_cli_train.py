"""amnet-train and amnet-eval (model mode) as a user runs them, including their bad input."""

import json
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import interrupt_training_in_epoch, run_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return run_main(f"amnet.cli.{module}", *args)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    proc = cli("synth", "--out", str(out), "--preset", "tiny", "--videos", "6", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def one_epoch(small_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    proc = cli(
        "train",
        "--config",
        str(TINY),
        "--data",
        str(small_data),
        "--out",
        str(run),
        "--epochs",
        "1",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    return run


def test_train_writes_safe_checkpoints_and_a_log(one_epoch):
    ckpt = torch.load(one_epoch / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["class_names"][0] == "BaseballPitch"
    assert ckpt["config"]["model"]["embd_dim"] == 64
    assert (one_epoch / "best.pt").is_file()
    log = (one_epoch / "train.log").read_text()
    assert "attention path reference" in log and "epoch 1/1" in log


def test_resume_continues_the_run(one_epoch, small_data, tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    (run / "last.pt").write_bytes((one_epoch / "last.pt").read_bytes())
    proc = cli(
        "train",
        "--config",
        str(TINY),
        "--data",
        str(small_data),
        "--out",
        str(run),
        "--epochs",
        "2",
        "--resume",
        str(run / "last.pt"),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["epochs"] == 1  # only epoch 2 ran
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_a_resumed_run_ends_where_the_uninterrupted_run_ends(small_data, tmp_path, monkeypatch):
    """A run killed after its first epoch and resumed gives the weights of the same run left
    alone, to the bit: the checkpoint carries the random streams (shuffling, crops, dropout), so
    the resumed epochs draw what the uninterrupted ones drew. A resume keeps its run's seed.
    ``--resume auto`` is the command a scheduler can rerun as it is: it starts the run, then
    continues it, then finds it done and leaves it alone."""
    args = ["--config", str(TINY), "--data", str(small_data), "--epochs", "2", "--quiet"]
    assert cli("train", *args, "--out", str(tmp_path / "whole")).returncode == 0
    interrupt_training_in_epoch(monkeypatch, 1)
    proc = cli("train", *args, "--out", str(tmp_path / "killed"), "--resume", "auto")
    assert proc.returncode == 130 and "interrupted" in proc.stderr  # as Ctrl-C stops it
    monkeypatch.undo()
    last = tmp_path / "killed" / "last.pt"
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert_one_line_error(
        cli(
            "train", *args, "--out", str(tmp_path / "killed"), "--resume", str(last), "--seed", "7"
        ),
        "seed 0, not 7",
    )
    proc = cli("train", *args, "--out", str(tmp_path / "killed"), "--resume", "auto")
    assert proc.returncode == 0, proc.stderr
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == whole["epoch"] == 2 and resumed["seed"] == 0
    for weights in ("model", "ema"):
        for name, tensor in whole[weights].items():
            assert torch.equal(tensor, resumed[weights][name]), (weights, name)
    log = (tmp_path / "killed" / "train.log").read_text()
    assert "--resume auto: a new run" in log and f"--resume auto: continuing {last}" in log

    # Done: run again, the command does nothing and leaves the finished run as it is.
    before = (last.stat().st_ino, last.stat().st_mtime_ns, last.read_bytes())
    proc = cli("train", *args, "--out", str(tmp_path / "killed"), "--resume", "auto")
    assert proc.returncode == 0 and json.loads(proc.stdout)["epochs"] == 0, proc.stderr
    assert (last.stat().st_ino, last.stat().st_mtime_ns, last.read_bytes()) == before
    assert_one_line_error(
        cli("train", *args, "--out", str(tmp_path / "killed"), "--resume", "auto", "--overwrite"),
        "--resume and --overwrite do not go together",
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "auto").write_text("a file of the user's named auto")
    assert_one_line_error(
        cli("train", *args, "--out", str(tmp_path / "killed"), "--resume", "auto"), "./auto"
    )


def test_a_killed_loader_worker_is_one_line_and_the_run_resumes(small_data, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """The out-of-memory killer's usual victim in training is a data-loading worker. The run
    stops with one line that says so (not an "internal error"), and ``--resume auto`` finishes
    it from the epoch before."""
    import multiprocessing
    import os
    import signal

    import amnet.train

    class KillsItsWorkers:
        """The epoch's loader; its worker processes are killed after the first batch."""

        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader)

        def __getattr__(self, name):
            return getattr(self.loader, name)

        def __iter__(self):
            # The worker has up to 2 batches ready ahead (prefetch_factor): at least one batch
            # more than that must be left for the epoch to notice the death.
            assert len(self.loader) >= 4
            before = set(multiprocessing.active_children())
            batches = iter(self.loader)  # starts the workers
            yield next(batches)
            workers = set(multiprocessing.active_children()) - before
            assert workers
            for worker in workers:
                os.kill(worker.pid, signal.SIGKILL)
                worker.join(timeout=30)
            yield from batches

    real_epoch = amnet.train.train_one_epoch

    def epoch_whose_workers_die(run, epoch, progress):
        if epoch == 1:
            run.loader = KillsItsWorkers(run.loader)
        return real_epoch(run, epoch, progress)

    config = tmp_path / "workers.yaml"
    # One video per batch: the epoch still needs batches from the workers after the first.
    config.write_text(f"base: {TINY}\nloader:\n  num_workers: 1\n  batch_size: 1\n")
    args = ["--config", str(config), "--data", str(small_data), "--out", str(tmp_path / "run"),
            "--epochs", "2", "--quiet", "--resume", "auto"]  # fmt: skip
    monkeypatch.setattr(amnet.train, "train_one_epoch", epoch_whose_workers_die)
    assert_one_line_error(
        cli("train", *args),
        "a data-loading worker process died (DataLoader worker (pid",
        "Lower loader.num_workers or loader.batch_size; `amnet-train --resume auto` continues",
    )
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 1
    proc = cli("train", *args)
    assert proc.returncode == 0, proc.stderr
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 2


def test_loader_workers_draw_their_own_crops(tmp_path, caplog):
    """With loader workers, each draws its own crops, new ones every epoch, and the same ones
    again for the same seed (without seeding them, every worker starts each epoch from a copy
    of one generator and repeats the others' crops)."""
    from amnet.config import load_config
    from amnet.data import make_dataset
    from amnet.train import training_loader

    rng = np.random.default_rng(0)
    videos = {}
    (tmp_path / "features").mkdir()
    for i in range(8):  # longer than the tiny config's 256-snippet window: every item is cropped
        np.save(tmp_path / "features" / f"v{i}.npy", rng.random((300, 2048), dtype=np.float32))
        videos[f"v{i}"] = {"subset": "validation", "duration": 40.1, "fps": 30.0,
                           "annotations": [{"label": "a", "segment": [0.0, 40.0]}]}  # fmt: skip
    (tmp_path / "annotations.json").write_text(json.dumps({"database": videos}))
    cfg = load_config(TINY)
    cfg["dataset"]["num_classes"] = 1
    dataset = make_dataset(cfg, tmp_path, "train_split", training=True, seed=0)

    def epochs(seed: int) -> list[list[int]]:
        loader = training_loader(dataset, {"batch_size": 1, "num_workers": 2}, seed, 1)
        return [[batch["offset"][0] for batch in loader] for _ in range(2)]

    first, second = epochs(0)
    # Batches alternate between the two workers: each one's crops, in its order.
    assert first[0::2] != first[1::2]
    assert first != second
    assert epochs(0) == [first, second]
    # More workers than CPUs only compete for them (PyTorch warns, in a paragraph): cut.
    cpus = len(os.sched_getaffinity(0))
    with caplog.at_level(logging.WARNING, "amnet"):
        many = training_loader(dataset, {"batch_size": 1, "num_workers": cpus + 30}, 0, 1)
    assert many.num_workers == cpus
    assert f"loader.num_workers {cpus + 30} is more than the {cpus} CPUs" in caplog.text


def test_eval_model_mode_matches_file_mode(one_epoch, small_data, tmp_path):
    results = tmp_path / "results.json"
    proc = cli(
        "evaluate",
        "--ckpt",
        str(one_epoch / "last.pt"),
        "--data",
        str(small_data),
        "--subset",
        "test",
        "--out",
        str(results),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    model_mode = json.loads(proc.stdout.splitlines()[-1])
    data = json.loads(results.read_text())
    assert set(data) == {"version", "results", "external_data"}
    proc = cli(
        "evaluate",
        "--gt",
        str(small_data / "annotations.json"),
        "--subset",
        "test",
        "--pred",
        str(results),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    file_mode = json.loads(proc.stdout.splitlines()[-1])
    assert np.allclose(model_mode["mAP"], file_mode["mAP"], atol=1e-12)


def test_epochs_zero_writes_an_initialised_checkpoint(small_data, tmp_path):
    proc = cli(
        "train",
        "--config",
        str(TINY),
        "--data",
        str(small_data),
        "--out",
        str(tmp_path),
        "--epochs",
        "0",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 0
    # The input statistics of the training split are set even without training.
    assert float(ckpt["model"]["input_std"].mean()) != 1.0


def test_unknown_config_key(small_data, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"base: {TINY}\nmodel:\n  n_head: 8\n")
    assert_one_line_error(
        cli("train", "--config", str(cfg), "--data", str(small_data), "--out", str(tmp_path / "r")),
        "model.n_head",
    )


def test_feature_dim_not_matching_the_config(small_data, tmp_path):
    cfg = tmp_path / "dim.yaml"
    cfg.write_text(f"base: {TINY}\ndataset:\n  input_dim: 1024\n")
    assert_one_line_error(
        cli("train", "--config", str(cfg), "--data", str(small_data), "--out", str(tmp_path / "r")),
        "expected [T, 1024]",
    )


def test_a_run_that_diverges_stops_without_writing_nan_weights(small_data, tmp_path):
    """A learning rate far too high turns the loss and the weights NaN: the run stops at that
    epoch with one line, instead of exiting 0 with NaN checkpoints (best.pt among them) that
    fail later, in export or as empty detections."""
    cfg = tmp_path / "lr.yaml"
    cfg.write_text(f"base: {TINY}\nopt:\n  learning_rate: 1.0e+30\n")
    run = tmp_path / "r"
    args = ["--config", str(cfg), "--data", str(small_data), "--out", str(run), "--epochs", "2"]
    assert_one_line_error(cli("train", *args), ": the training loss is nan (diverged")
    for kept in run.glob("*.pt"):  # the epochs before it, whose weights are still numbers
        weights = torch.load(kept, weights_only=True)["model"]
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.parametrize(
    ("split", "message"),
    [("train_split", "has no videos"), ("val_split", "(val_split: [] trains without validation)")],
)
def test_a_split_without_videos_is_refused(small_data, tmp_path, split, message):
    """A misspelt subset is an error: for the validation split it would otherwise train
    without validation, silently (no best.pt, no mAP)."""
    cfg = tmp_path / "split.yaml"
    cfg.write_text(f"base: {TINY}\ndataset:\n  {split}: [tset]\n")
    assert_one_line_error(
        cli("train", "--config", str(cfg), "--data", str(small_data), "--out", str(tmp_path / "r")),
        "subset ['tset'] has no videos",
        message,
    )
    assert not (tmp_path / "r").exists()


def test_corrupt_and_foreign_checkpoints(small_data, tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"\x00" * 100)
    assert_one_line_error(
        cli("evaluate", "--ckpt", str(tmp_path / "corrupt.pt"), "--data", str(small_data)),
        "not a readable checkpoint",
    )
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    assert_one_line_error(
        cli("evaluate", "--ckpt", str(tmp_path / "foreign.pt"), "--data", str(small_data)),
        "not an AMNet checkpoint",
    )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--data", "NOPE"], "not found"),  # data
        (["--seed", "-1"], "--seed must be"),  # options
        (["--seed", str(2**32)], "--seed must be"),
        (["--epochs", "-1"], "--epochs must be"),
    ],
)
@pytest.mark.parametrize("out_exists", [False, True], ids=["new-out", "existing-out"])
def test_bad_input_leaves_no_run_behind(small_data, tmp_path, extra, needle, out_exists):
    """A run that fails on its input writes nothing: no new --out folder, no train.log."""
    out = tmp_path / "r"
    if out_exists:
        out.mkdir()
    extra = [str(tmp_path / "nope") if a == "NOPE" else a for a in extra]
    args = ["--config", str(TINY), "--data", str(small_data), "--out", str(out), *extra]
    assert_one_line_error(cli("train", *args), needle)
    assert (list(out.iterdir()) == []) if out_exists else not out.exists()


def test_sigterm_stops_training_as_ctrl_c_does(small_data, tmp_path, monkeypatch):
    """SIGTERM (a scheduler or container stopping the job) in epoch 2: exit 143 with one line,
    the checkpoint of epoch 1 kept, no temporary files; the run resumes."""
    import os
    import signal

    import amnet.train

    real_epoch = amnet.train.train_one_epoch

    def terminated_in_epoch_two(run, epoch, progress):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled where the run is
        return real_epoch(run, epoch, progress)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(amnet.train, "train_one_epoch", terminated_in_epoch_two)
    run = tmp_path / "run"
    args = ["--config", str(TINY), "--data", str(small_data), "--epochs", "2", "--out", str(run)]
    proc = cli("train", *args, "--quiet")
    assert proc.returncode == 143 and proc.stderr == "amnet-train: terminated\n", proc.stderr
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the command
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    proc = cli("train", *args, "--resume", str(run / "last.pt"), "--quiet")
    assert proc.returncode == 0, proc.stderr
