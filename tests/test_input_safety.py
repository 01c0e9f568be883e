"""Bad data, bad environments and interrupted runs: every command fails early with one line and
exit 2, leaves nothing half-written, and the runtime treats an empty video the same way in the
API and on the command line."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from amnet.cli.train import main as train_main
from amnet.deploy import Detector
from amnet.deploy.infer_cli import main as infer_main
from amnet.errors import AMNetError
from amnet.fileio import (
    STALE_TEMP_SECONDS,
    StagedFiles,
    atomic_write_text,
    read_ahead,
    read_features,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")
DIM = 2048


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "Traceback" not in err[0]
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


@pytest.fixture
def data(tiny_dataset, tmp_path) -> Path:
    """A private copy of six videos of the tiny set (three per split), safe to damage."""
    ann = json.loads((tiny_dataset / "annotations.json").read_text())
    db = ann["database"]
    keep = [v for v in sorted(db) if db[v]["subset"] == "validation"][:3]  # the training split
    keep += [v for v in sorted(db) if db[v]["subset"] == "test"][:3]
    out = tmp_path / "data"
    (out / "features").mkdir(parents=True)
    for vid in keep:
        shutil.copy(tiny_dataset / "features" / f"{vid}.npy", out / "features" / f"{vid}.npy")
    ann["database"] = {v: db[v] for v in keep}
    (out / "annotations.json").write_text(json.dumps(ann))
    return out


def first_video(data: Path, subset_is_training: bool) -> Path:
    db = json.loads((data / "annotations.json").read_text())["database"]
    wanted = "validation" if subset_is_training else "test"  # THUMOS14 trains on validation
    vid = next(v for v in sorted(db) if db[v]["subset"] == wanted)
    return data / "features" / f"{vid}.npy"


def _nan(path):
    a = np.load(path)
    a[len(a) // 2, 7] = np.nan
    np.save(path, a)


def _inf(path):
    a = np.load(path).astype(np.float64)
    a[-1, 0] = 1e300  # finite in float64, inf as float32
    np.save(path, a)


# Classes of damaged feature files, each written over one real file.
DAMAGE = {
    "nan": _nan,
    "beyond float32": _inf,
    "zero-length": lambda p: np.save(p, np.zeros((0, DIM), np.float32)),
    "wrong width": lambda p: np.save(p, np.zeros((50, DIM - 1), np.float32)),
    "one-dimensional": lambda p: np.save(p, np.zeros(DIM, np.float32)),
    "integers": lambda p: np.save(p, np.ones((50, DIM), np.int32)),
    "pickled objects": lambda p: np.save(p, np.array([{"a": 1}], dtype=object)),  # np.save pickles
    "garbage": lambda p: p.write_bytes(os.urandom(300)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:2000]),
    "empty file": lambda p: p.write_bytes(b""),
    "a folder": lambda p: (p.unlink(), p.mkdir()),
    "a fifo": lambda p: (p.unlink(), os.mkfifo(p)),
}


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_training_checks_every_feature_file_before_the_first_step(
    data, tmp_path, capsys, monkeypatch, damage, split
):
    import amnet.train

    victim = first_video(data, split == "train")
    DAMAGE[damage](victim)
    run = tmp_path / "run"
    epochs: list[int] = []
    monkeypatch.setattr(amnet.train, "train_one_epoch", lambda run, epoch, _: epochs.append(epoch))
    code = train_main(
        ["--config", TINY, "--data", str(data), "--out", str(run), "--epochs", "3", "-q"]
    )
    one_line_error(capsys, code, victim.name)
    assert epochs == []  # found before the first epoch began
    assert not run.exists()  # and the failed run left nothing behind


def test_a_zero_length_video_gets_no_detections_in_the_api_and_the_cli(
    tiny_model, tmp_path, caplog
):
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, DIM), np.float32))
    full = tmp_path / "full.npy"
    np.save(full, np.abs(np.random.default_rng(1).normal(0, 0.3, (90, DIM))).astype(np.float32))
    det = Detector(tiny_model["onnx"])
    assert det(np.load(empty)) == []
    assert det.detect_many([np.load(empty), np.load(full)])[0] == []
    out = tmp_path / "out.json"
    assert (
        infer_main(["--engine", str(tiny_model["onnx"]), str(empty), str(full), "-o", str(out)])
        == 0
    )
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("empty.npy" in m and "zero-length" in m for m in warned), warned
    results = json.loads(out.read_text())["results"]
    assert results["empty"] == [] and set(results) == {"empty", "full"}
    for fmt, check in (
        ("jsonl", lambda text: json.loads(text.splitlines()[0])["detections"] == []),
        ("csv", lambda text: all(not row.startswith("empty,") for row in text.splitlines())),
    ):
        path = tmp_path / f"out.{fmt}"
        assert infer_main(["--engine", str(tiny_model["onnx"]), str(empty), "--format", fmt, "-o", str(path), "-q"]) == 0  # fmt: skip
        assert check(path.read_text())
    if importlib.util.find_spec("matplotlib") is not None:
        # Its timeline is drawn (empty); a .pt model has no AME curves to draw for it.
        plots = tmp_path / "plots"
        args = ["--engine", str(tiny_model["pt"]), str(empty), "--plot", str(plots), "-q"]
        assert infer_main([*args, "-o", str(tmp_path / "p.json")]) == 0
        assert sorted(p.name for p in plots.iterdir()) == ["empty.png"]


@pytest.mark.parametrize("batch_size", ["1", "3"])  # 3: windows of all three videos share calls
def test_a_file_the_model_cannot_answer_is_named_and_skipped_like_a_bad_file(
    tiny_model, tmp_path, capsys, batch_size
):
    """Finite features of extreme magnitude make the model's outputs NaN: the error names the
    file (not "these features"), and --skip-bad skips it as it skips an unreadable file, the
    other videos' results unchanged."""
    rng = np.random.default_rng(2)
    paths = [tmp_path / f"{name}.npy" for name in "abc"]
    for path in (paths[0], paths[2]):
        np.save(path, np.abs(rng.normal(0, 0.3, (300, DIM))).astype(np.float32))
    np.save(paths[1], np.full((300, DIM), 3e38, np.float32))
    out, alone = tmp_path / "out.json", tmp_path / "alone.json"
    args = ["--engine", str(tiny_model["onnx"]), *map(str, paths), "--batch-size", batch_size]
    one_line_error(
        capsys, infer_main([*args, "-o", str(out)]), f"{paths[1]}: the model's outputs are NaN"
    )
    assert not out.exists()
    assert infer_main([*args, "--skip-bad", "-q", "-o", str(out)]) == 3
    assert f"{paths[1]}: the model's outputs are NaN" in capsys.readouterr().err
    good = ["--engine", str(tiny_model["onnx"]), str(paths[0]), str(paths[2]), "-q"]
    assert infer_main([*good, "-o", str(alone)]) == 0
    assert json.loads(out.read_text())["results"] == json.loads(alone.read_text())["results"]


def test_stale_temporary_files_are_ignored_then_cleaned(tmp_path):
    out = tmp_path / "results.json"
    stale = tmp_path / ".results.json.killed.tmp"
    stale.write_text("half a file")
    old = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    live = tmp_path / ".results.json.writing.tmp"  # another writer, still at work
    live.write_text("in progress")
    other = tmp_path / ".other.json.killed.tmp"
    other.write_text("not ours")
    os.utime(other, (old, old))
    atomic_write_text(out, "{}")
    assert out.read_text() == "{}"
    assert not stale.exists() and live.exists() and other.exists()


def test_a_killed_training_leaves_a_run_that_resumes(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", TINY, "--data", str(data), "--out", str(run), "-q"]
    assert train_main([*args, "--epochs", "1"]) == 0
    # What a kill during a checkpoint write leaves: a temporary beside last.pt.
    (run / ".last.pt.abcd1234.tmp").write_bytes(b"PK\x03\x04 half a zip")
    assert train_main([*args, "--epochs", "2", "--resume", str(run / "last.pt")]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


class RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize(
    ("layout", "said"),
    [
        ("torch.save", "pickled Python objects"),
        ("torch.save, legacy format", "pickled Python objects"),
        # A newer pickle protocol: the loader stops at the first instruction it does not take.
        ("pickle protocol 5", "the weights-only loader refused it"),
    ],
)
def test_checkpoints_that_would_run_code_are_refused_unrun(tiny_dataset, tmp_path, capsys,
                                                           layout, said):  # fmt: skip
    """Every command that reads a checkpoint reads it with weights_only=True: a file that
    would run code on loading is one line, and its code never runs."""
    from amnet.cli.evaluate import main as eval_main
    from amnet.cli.export import main as export_main

    marker = tmp_path / "the_code_ran"
    ckpt = tmp_path / "evil.pt"
    payload = {"format": 1, "model": RunsCode(marker)}
    if layout.startswith("torch.save"):
        torch.save(payload, ckpt, _use_new_zipfile_serialization=layout == "torch.save")
    else:
        ckpt.write_bytes(pickle.dumps(payload, protocol=5))
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((40, DIM), np.float32))
    commands = [
        (infer_main, ["--engine", str(ckpt), str(video)]),
        (eval_main, ["--ckpt", str(ckpt), "--data", str(tiny_dataset)]),
        (export_main, ["onnx", "--ckpt", str(ckpt), "--out", str(tmp_path / "m.onnx")]),
        (train_main, ["--config", TINY, "--data", str(tiny_dataset), "--out",
                      str(tmp_path / "run"), "--resume", str(ckpt), "-q"]),
    ]  # fmt: skip
    for main, argv in commands:
        one_line_error(capsys, main(argv), str(ckpt), said)
    with pytest.raises(AMNetError, match=said):
        Detector(ckpt)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt", "v.npy"]


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    args = ["--config", TINY, "--data", str(tiny_dataset), "--out", str(run), "--epochs", "0"]
    assert train_main([*args, "-q"]) == 0
    return run / "last.pt"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda c: c["config"]["model"].update(embd_dim=96), "model.embd_dim"),
        (lambda c: c.update(class_names=c["class_names"][:-1]), "classes"),
        (lambda c: c.update(class_names=c["class_names"][::-1]), "another order"),
        (lambda c: c.pop("optimizer"), "cannot resume"),
        (lambda c: c["model"].pop(next(iter(c["model"]))), "does not match"),
        (lambda c: c.update(model=list(c["model"].values())), "'model' must map parameter names"),
        (lambda c: c.update(ema={"w": 1.0}), "'ema' must map parameter names to tensors"),
    ],
    ids=[
        "architecture",
        "class count",
        "class order",
        "not a training checkpoint",
        "weights",
        "weights not a mapping",
        "weights not tensors",
    ],
)
def test_mismatched_resumes_are_one_line(
    finished_run, tiny_dataset, tmp_path, capsys, change, needle
):
    ckpt = torch.load(finished_run, weights_only=True)
    change(ckpt)
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    if needle == "classes":  # a checkpoint whose class list no longer matches its own config
        ckpt["config"]["dataset"]["num_classes"] -= 1
        torch.save(ckpt, other)
    run = tmp_path / "run"
    code = train_main(
        ["--config", TINY, "--data", str(tiny_dataset), "--out", str(run), "--epochs", "1",
         "--resume", str(other), "-q"]
    )  # fmt: skip
    one_line_error(capsys, code, needle)
    assert not (run / "last.pt").exists()


READ_ONLY = Path("/proc/sys")  # read-only for every user, root included


@pytest.mark.skipif(not READ_ONLY.is_dir(), reason="needs Linux's read-only /proc/sys")
def test_read_only_locations_are_one_line_before_any_work(
    tiny_model, tiny_dataset, tmp_path, capsys
):
    video = tmp_path / "v.npy"
    np.save(video, np.zeros((40, DIM), np.float32))
    engine = str(tiny_model["onnx"])
    cases = [
        (train_main, ["--config", TINY, "--data", str(tiny_dataset), "--out", str(READ_ONLY / "run"), "-q"]),
        (infer_main, ["--engine", engine, str(video), "-o", str(READ_ONLY / "out.json")]),
        (infer_main, ["--engine", engine, str(video), "--plot", str(READ_ONLY / "plots"), "-o", str(tmp_path / "o.json")]),
    ]  # fmt: skip
    for main, argv in cases:
        one_line_error(capsys, main(argv), str(READ_ONLY))
    assert not (tmp_path / "o.json").exists()


def test_a_full_disk_on_stdout_is_one_line(tiny_model, tmp_path, capsys, monkeypatch):
    video = tmp_path / "v.npy"
    np.save(video, np.abs(np.random.default_rng(2).normal(0, 0.3, (60, DIM))).astype(np.float32))
    full = open("/dev/full", "w")  # noqa: SIM115 -- every write fails with ENOSPC, as on a full disk
    monkeypatch.setattr("sys.stdout", full)
    code = infer_main(["--engine", str(tiny_model["onnx"]), str(video), "-q"])
    monkeypatch.undo()
    with contextlib.suppress(OSError):  # what is left in its buffer cannot be flushed either
        full.close()
    one_line_error(capsys, code, "No space left")


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    """Writers that lose the system's reason on a full disk (numpy's short write, PyTorch's
    zip writer) are still one line naming the file and the cause; nothing half-written stays.
    (A full disk cannot be made here: the writers' failures are the ones they raise.)"""
    from amnet.checkpoint import save_checkpoint
    from amnet.fileio import atomic_save_npy

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))

    def short_write(handle, array, allow_pickle):
        handle.write(b"\x93NUMPY")
        raise OSError("552960 requested and 523232 written")

    def zip_writer(obj, f):
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 512 vs 398")

    monkeypatch.setattr(np, "save", short_write)
    monkeypatch.setattr(torch, "save", zip_writer)
    for write, path in ((lambda p: atomic_save_npy(p, np.zeros(3)), tmp_path / "v.npy"),
                        (lambda p: save_checkpoint(p, model={}), tmp_path / "last.pt")):  # fmt: skip
        with pytest.raises(AMNetError) as info:
            write(path)
        assert str(info.value) == f"{path}: cannot write (no space left on the device)"
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)  # room left: the writer's words
    with pytest.raises(AMNetError, match=r"v.npy: cannot write \(552960 requested and 523232"):
        atomic_save_npy(tmp_path / "v.npy", np.zeros(3))


def _cpu_tensor_beyond_the_address_space() -> None:
    torch.empty(2**62, dtype=torch.uint8)  # a real refusal of PyTorch's CPU allocator


def _python_buffer_beyond_the_address_space() -> None:
    bytearray(2**62)


def _numpy_array_beyond_the_address_space() -> None:
    np.empty((2**40, 2**40), np.float32)  # numpy says ValueError: array is too big


def _cuda_out_of_memory() -> None:
    # The class PyTorch raises when a GPU runs out (no GPU here to exhaust).
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has ...")


@pytest.mark.parametrize(
    ("allocate", "detail"),
    [
        (_cpu_tensor_beyond_the_address_space, "(DefaultCPUAllocator: "),
        (_python_buffer_beyond_the_address_space, ""),
        (_numpy_array_beyond_the_address_space, "(array is too big"),
        (_cuda_out_of_memory, "(CUDA out of memory. Tried to allocate 20.00 GiB."),
    ],
)
def test_running_out_of_memory_is_one_line_not_an_internal_error(allocate, detail, capsys,
                                                                 monkeypatch):  # fmt: skip
    """A batch or window too large for the machine is the user's to shrink: every command says
    "out of memory" in one line, with the allocator's words, even with AMNET_DEBUG set (that
    shows tracebacks of internal errors only). Other runtime errors stay internal errors."""
    from amnet.cli.common import run_cli

    monkeypatch.setenv("AMNET_DEBUG", "1")
    line = one_line_error(capsys, run_cli(lambda argv: allocate(), [], "amnet-x"),
                          "amnet-x: error: out of memory" + (f" {detail}" if detail else ""))  # fmt: skip
    assert "internal" not in line
    monkeypatch.delenv("AMNET_DEBUG")

    def a_bug(argv):
        raise RuntimeError("shape mismatch")

    one_line_error(capsys, run_cli(a_bug, [], "amnet-x"), "internal error (RuntimeError: shape")


def test_closed_standard_streams_are_one_line(tiny_model, tmp_path):
    """A command started without stdout (``>&-``) or stdin (``<&-``) says so when it needs
    one, instead of an internal error on None; one that does not need it runs."""
    engine = str(tiny_model["onnx"])
    infer = f"{sys.executable} -m amnet.deploy.infer_cli --engine {engine}"
    out = tmp_path / "d.json"
    for shell, needle in (
        (f"{infer} --describe >&-", "stdout is closed (the command was started with >&-)"),
        (f"{infer} --stream --dim {DIM} <&-", "stdin is closed (the command was started with <&-)"),
        (f"{infer} --describe -o {out} >&-", None),
    ):
        proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120)
        if needle is None:
            assert proc.returncode == 0 and json.loads(out.read_text())["model"], proc.stderr
        else:
            assert (
                proc.returncode == 2
                and proc.stderr == f"amnet-infer: error: {needle}; give it one (a file or a pipe)\n"
            )


def test_name_clashes_leave_no_partial_png_set(tiny_model, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    videos = []
    for i in range(3):
        videos.append(tmp_path / f"v{i}.npy")
        np.save(videos[-1], np.abs(np.random.default_rng(i).normal(0, 0.3, (60, DIM))).astype(np.float32))  # fmt: skip
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "v2.png").mkdir()  # the last video's picture name is taken by a folder
    out = tmp_path / "out.json"
    argv = ["--engine", str(tiny_model["onnx"]), *map(str, videos), "--plot", str(plots)]
    one_line_error(capsys, infer_main([*argv, "-o", str(out)]), "v2.png", "folder")
    assert sorted(p.name for p in plots.iterdir()) == ["v2.png"]  # nothing else, no temporaries
    assert not out.exists()
    (plots / "v2.png").rmdir()
    assert infer_main([*argv, "-o", str(out), "-q"]) == 0
    assert sorted(p.name for p in plots.iterdir()) == ["v0.png", "v1.png", "v2.png"]
    # A --plot folder that a failed run would have made is not left behind, empty.
    new = tmp_path / "new" / "plots"
    (tmp_path / "bad.npy").write_bytes(b"not a .npy file")
    argv = ["--engine", str(tiny_model["onnx"]), str(videos[0]), str(tmp_path / "bad.npy")]
    assert infer_main([*argv, "--plot", str(new), "-o", str(out)]) == 2
    assert "bad.npy: not a .npy file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError), StagedFiles() as staged:  # its folders go with it
        staged.write_bytes(tmp_path / "made" / "for" / "a.png", b"new")
        raise RuntimeError("the work failed")
    assert os.listdir(tmp_path) == []
    (tmp_path / "a.png").write_bytes(b"old")
    with pytest.raises(RuntimeError), StagedFiles() as staged:
        staged.write_bytes(tmp_path / "a.png", b"new")
        staged.write_bytes(tmp_path / "b.png", b"new")
        raise RuntimeError("the third picture failed")
    assert (tmp_path / "a.png").read_bytes() == b"old" and not (tmp_path / "b.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    with StagedFiles() as staged:
        staged.write_bytes(tmp_path / "a.png", b"new")
        with pytest.raises(AMNetError, match="twice"):
            staged.write_bytes(tmp_path / "." / "a.png", b"again")
    assert (tmp_path / "a.png").read_bytes() == b"new"


def test_files_are_read_ahead_in_order_and_a_bad_one_fails_at_its_turn(tmp_path):
    """``read_ahead`` (how ``amnet-infer`` and ``amnet-bench`` read a folder) yields the files
    in order, never reads more than ``depth`` beyond the one being handed out, and raises a
    bad file's error when that file's turn comes, after the good ones before it."""
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"v{i}.npy")
        np.save(paths[-1], np.full((10 + i, 4), i, dtype=np.float32))
    paths[4].write_bytes(b"not numpy")
    started: list[int] = []
    lock = threading.Lock()

    def read(path):
        with lock:
            started.append(paths.index(path))
        return read_features(path, 4)

    got = []
    with pytest.raises(AMNetError, match=r"v4\.npy: not a \.npy file"):
        for i, array in enumerate(read_ahead(paths, read, depth=2)):
            assert max(started) <= i + 2  # at most two files beyond this one
            got.append(int(array[0, 0]))
    assert got == [0, 1, 2, 3]
