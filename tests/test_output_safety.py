"""Outputs never replace what the user owns: an input of the same command (by any path that
resolves to it), a device, a FIFO or a link to one; a path ending in '/' is not a file; '-' is
stdout. Checked before any work, with one line and exit 2, for every command that writes a file."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from amnet.cli.baseline import main as baseline_main
from amnet.cli.evaluate import main as eval_main
from amnet.deploy.infer_cli import main as infer_main
from amnet.errors import AMNetError
from amnet.fileio import atomic_write_text, check_out_path


def fingerprint(path: Path) -> tuple:
    info = os.lstat(path)
    return (info.st_ino, info.st_mode, path.read_bytes() if stat.S_ISREG(info.st_mode) else None)


def one_line_refusal(capsys, code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert all(n in err[0] for n in needles), err[0]


@pytest.fixture
def video(tmp_path) -> Path:
    path = tmp_path / "video.npy"
    np.save(path, np.abs(np.random.default_rng(0).normal(0, 0.3, (120, 2048))).astype(np.float32))
    return path


def aliases(target: Path, tmp_path: Path) -> list[Path]:
    """Other spellings of ``target``: a symlink, a hard link, a path with '..' in it."""
    link = tmp_path / "alias.lnk"
    link.symlink_to(target)
    hard = tmp_path / "hard.npy"
    os.link(target, hard)
    return [target, link, hard, target.parent / "." / ".." / target.parent.name / target.name]


def test_infer_never_writes_onto_its_inputs(tiny_model, video, tmp_path, capsys):
    before = fingerprint(video)
    for out in aliases(video, tmp_path):
        one_line_refusal(capsys, infer_main(["--engine", str(tiny_model["onnx"]), str(video),
                                             "-o", str(out)]), "input")  # fmt: skip
    model_before = fingerprint(tiny_model["onnx"])
    code = infer_main(
        ["--engine", str(tiny_model["onnx"]), str(video), "-o", str(tiny_model["onnx"])]
    )
    one_line_refusal(capsys, code, "input")
    assert fingerprint(video) == before and fingerprint(tiny_model["onnx"]) == model_before


def test_special_files_and_folder_paths_are_never_replaced(tiny_model, video, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link_to_fifo = tmp_path / "to_pipe"
    link_to_fifo.symlink_to(fifo)
    for out, needle in ((fifo, "not a regular file"), (link_to_fifo, "not a regular file"),
                        (Path(os.devnull), "not a regular file"), (tmp_path, "folder")):  # fmt: skip
        before = os.lstat(out)
        code = infer_main(["--engine", str(tiny_model["onnx"]), str(video), "-o", str(out)])
        one_line_refusal(capsys, code, needle)
        after = os.lstat(out)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    code = infer_main(["--engine", str(tiny_model["onnx"]), str(video), "-o", f"{tmp_path}/new/"])
    one_line_refusal(capsys, code, "'/'")
    assert not (tmp_path / "new").exists()
    # The library writer refuses as well, whoever calls it.
    with pytest.raises(AMNetError, match="not a regular file"):
        atomic_write_text(fifo, "x")


def test_outputs_keep_to_their_kind(tiny_dataset, tiny_model, video, tmp_path, capsys,
                                    monkeypatch):  # fmt: skip
    """A text output (results, operating points, a description) never takes the name of a file
    users keep, so a slip such as ``-o run/best.pt`` cannot replace a checkpoint; a model is
    written only under its own suffix (it picks the backend); and ``-`` is stdout only where a
    command writes there, never a file named ``-``."""
    from amnet.cli.export import main as export_main

    for name in ("best.pt", "model.ONNX", "model.plan", "other.npy", "frame.png", "cfg.yaml"):
        target = tmp_path / name
        target.write_bytes(b"keep")
        code = infer_main(["--engine", str(tiny_model["onnx"]), str(video), "-o", str(target)])
        one_line_refusal(capsys, code, f"{target}: a {target.suffix.lower()} name is for a model")
        assert target.read_bytes() == b"keep"
    target = tmp_path / "best.pt"
    code = baseline_main(["--data", str(tiny_dataset), "--subset", "test", "--out", str(target)])
    one_line_refusal(capsys, code, "is for a model, features")
    assert target.read_bytes() == b"keep"
    annotations = tmp_path / "annotations.json"  # e.g. a calibration set's
    annotations.write_text("{}")
    code = export_main(["onnx", "--ckpt", str(tiny_model["pt"]), "--out", str(annotations)])
    one_line_refusal(capsys, code, "the output must be a .onnx file")
    assert annotations.read_text() == "{}"
    monkeypatch.chdir(tmp_path)
    code = baseline_main(["--data", str(tiny_dataset), "--subset", "test", "--out", "-"])
    one_line_refusal(capsys, code, "-: this output is a file")
    assert not (tmp_path / "-").exists()


def test_dash_is_stdout(tiny_model, video, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert infer_main(["--engine", str(tiny_model["onnx"]), str(video), "-o", "-"]) == 0
    assert "video" in json.loads(capsys.readouterr().out)["results"]
    assert not (tmp_path / "-").exists()


def test_eval_and_baseline_refuse_to_overwrite_their_data(
    tiny_dataset, tiny_model, tmp_path, capsys
):
    ann = tiny_dataset / "annotations.json"
    feature = sorted((tiny_dataset / "features").glob("video_test_*.npy"))[0]
    before = {p: fingerprint(p) for p in (ann, feature, tiny_model["pt"])}
    for out in (ann, feature, tiny_model["pt"]):
        code = eval_main(["--ckpt", str(tiny_model["pt"]), "--data", str(tiny_dataset),
                          "--subset", "test", "--out", str(out)])  # fmt: skip
        one_line_refusal(capsys, code, "input")
    for out in (ann, feature):
        code = baseline_main(["--data", str(tiny_dataset), "--subset", "test", "--out", str(out)])
        one_line_refusal(capsys, code, "input")
    assert {p: fingerprint(p) for p in before} == before


def test_check_out_path_accepts_ordinary_targets(tmp_path, video):
    assert check_out_path(tmp_path / "new.json", [video]) == tmp_path / "new.json"
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    assert check_out_path(existing, [video]) == existing


@pytest.mark.parametrize(
    "bad_id",
    ["../escape", "/abs/path", "a/b", "..", ".", "nul\x00id", "tab\tid", "back\\slash", ""],
)
def test_ids_from_files_never_become_paths(tmp_path, bad_id, capsys):
    from amnet.annotations import load_annotations
    from amnet.results import read_results

    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps({"database": {bad_id: {"subset": "test", "duration": 10.0, "fps": 30.0,
                                                     "annotations": []}}}))  # fmt: skip
    with pytest.raises(AMNetError, match="video id"):
        load_annotations(ann)
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"results": {bad_id: []}}))
    with pytest.raises(AMNetError, match="video id"):
        read_results(res, ["a"])
    # Through a command: one line, nothing written outside the output folder.
    out = tmp_path / "synth"
    from amnet.cli.synth import main as synth_main

    code = synth_main(["--out", str(out), "--layout", str(ann), "--dim", "8", "-q"])
    one_line_refusal(capsys, code, "video id")
    assert not (tmp_path / "escape.npy").exists() and not out.exists()


def test_a_new_dataset_that_does_not_finish_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """A synthetic dataset that fails (a video too long to build, a full disk, Ctrl-C) leaves
    no folder: the next try would otherwise need --overwrite."""
    import amnet.synth
    from amnet.cli.synth import main as synth_main

    def layout(*durations: float) -> Path:
        path = tmp_path / "layout.json"
        videos = {f"v{i}": {"subset": "test", "duration": d, "fps": 30.0, "annotations": []}
                  for i, d in enumerate(durations)}  # fmt: skip
        path.write_text(json.dumps({"database": videos}))
        return path

    out = tmp_path / "data"
    args = ["--out", str(out), "--dim", "8", "-q", "--layout"]
    code = synth_main([*args, str(layout(20.0, 1e15))])
    one_line_refusal(capsys, code, "'v1': 1e+15 s is", "more than a synthetic video may have")
    assert not out.exists()
    real, made = amnet.synth.synthesize_features, []

    def stopped_after_one(*a, **k):
        if made:
            raise KeyboardInterrupt
        made.append(1)
        return real(*a, **k)

    monkeypatch.setattr(amnet.synth, "synthesize_features", stopped_after_one)
    assert synth_main([*args, str(layout(20.0, 20.0))]) == 130
    assert not out.exists() and made
    monkeypatch.undo()
    assert synth_main([*args, str(layout(20.0, 20.0))]) == 0  # no --overwrite needed


def test_fifo_inputs_are_refused_without_blocking(tiny_model, tmp_path, capsys):
    fifo = tmp_path / "feed.npy"
    os.mkfifo(fifo)
    code = infer_main(["--engine", str(tiny_model["onnx"]), str(fifo)])
    one_line_refusal(capsys, code, "not a regular file")
    from amnet.annotations import load_annotations

    fifo_json = tmp_path / "annotations.json"
    os.mkfifo(fifo_json)
    with pytest.raises(AMNetError, match="not a regular file"):
        load_annotations(fifo_json)
    from amnet.results import read_results

    with pytest.raises(AMNetError, match="not a regular file"):
        read_results(fifo_json, ["a"])  # (its other-format hint must not open it either)


def test_a_folder_s_unreadable_entries_are_reported_not_dropped(tiny_model, video, tmp_path,
                                                                capsys):  # fmt: skip
    """A dangling link, a FIFO or a folder among a folder's ``.npy`` entries is a bad file, as when
    named on the command line: silently leaving it out would drop a video from the results."""
    folder = tmp_path / "features"
    folder.mkdir()
    shutil.copy(video, folder / "good.npy")
    (folder / "gone.npy").symlink_to(tmp_path / "nowhere.npy")
    os.mkfifo(folder / "pipe.npy")
    (folder / "sub.npy").mkdir()
    code = infer_main(
        ["--engine", str(tiny_model["onnx"]), str(folder), "-o", str(tmp_path / "r.json")]
    )
    said = capsys.readouterr().err
    assert code == 2 and "3 of 4 feature files are bad; nothing was run" in said
    assert "gone.npy: feature file not found" in said and "pipe.npy: not a regular file" in said
    assert "sub.npy: is a folder" in said
    assert not (tmp_path / "r.json").exists()
    code = infer_main(["--engine", str(tiny_model["onnx"]), str(folder), "--skip-bad", "-q",
                       "-o", str(tmp_path / "r.json")])  # fmt: skip
    assert code == 3
    assert list(json.loads((tmp_path / "r.json").read_text())["results"]) == ["good"]
    said = capsys.readouterr().err
    assert "gone.npy" in said and "pipe.npy: not a regular file" in said and "sub.npy" in said


def test_finished_work_is_not_replaced_without_a_flag(tiny_dataset, tmp_path, capsys):
    from amnet.cli.synth import main as synth_main
    from amnet.cli.train import main as train_main

    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")
    run = tmp_path / "run"
    args = [
        "--config",
        config,
        "--data",
        str(tiny_dataset),
        "--out",
        str(run),
        "--epochs",
        "0",
        "-q",
    ]
    assert train_main(args) == 0
    before = fingerprint(run / "last.pt")
    one_line_refusal(capsys, train_main(args), "--resume", "--overwrite")
    assert fingerprint(run / "last.pt") == before
    shutil.copy(run / "last.pt", run / "best.pt")  # as if the run had validated
    assert train_main([*args, "--overwrite", "--seed", "5"]) == 0
    # The replaced run's best.pt goes with it: left there, it would be evaluated as this run's.
    assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt"]
    # Continuing another run's checkpoint here would replace this run's checkpoints; in a
    # folder of its own it continues.
    other = tmp_path / "other"
    assert train_main([*args[:5], str(other), *args[6:]]) == 0
    before = fingerprint(run / "last.pt")
    code = train_main([*args, "--resume", str(other / "last.pt")])
    one_line_refusal(capsys, code, "already holds a run", "is another run's checkpoint")
    assert fingerprint(run / "last.pt") == before
    assert (
        train_main(
            [*args[:5], str(tmp_path / "branch"), *args[6:], "--resume", str(other / "last.pt")]
        )
        == 0
    )
    # A dataset folder that is not empty (here: real files of the user) needs --overwrite.
    data = tmp_path / "mine"
    data.mkdir()
    (data / "annotations.json").write_text("{}")
    code = synth_main(["--out", str(data), "--preset", "tiny", "--videos", "1", "--dim", "8", "-q"])
    one_line_refusal(capsys, code, "--overwrite")
    assert (data / "annotations.json").read_text() == "{}"
    assert not (data / "features").exists()
    # Its layout is an input, never replaced, even with --overwrite.
    code = synth_main(["--out", str(data), "--layout", str(data / "annotations.json"),
                       "--overwrite", "--dim", "8", "-q"])  # fmt: skip
    one_line_refusal(capsys, code, "the layout is inside --out")
    assert os.listdir(data) == ["annotations.json"]
    assert (data / "annotations.json").read_text() == "{}"


def test_one_training_at_a_time_per_run_folder(tiny_dataset, tmp_path, capsys):
    """A second amnet-train on a run folder that another one is writing is refused at once,
    naming the holder; the lock goes with its holder, even one killed with SIGKILL, and the file
    that leaves does not block the next run. A file of the user's at the lock's path is left
    alone."""
    from clitools import lock_held_elsewhere

    from amnet.cli.train import main as train_main
    from amnet.train import RUN_LOCK

    config = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")
    run = tmp_path / "run"
    args = ["--config", config, "--data", str(tiny_dataset), "--out", str(run), "--epochs", "0",
            "-q"]  # fmt: skip
    run.mkdir()
    with lock_held_elsewhere(run / RUN_LOCK) as pid:
        one_line_refusal(capsys, train_main(args), f"{run}: another amnet-train", f"(pid {pid})")
        assert os.listdir(run) == [RUN_LOCK]  # no log, no checkpoint of the refused run
    assert (run / RUN_LOCK).exists()
    assert train_main(args) == 0
    assert sorted(os.listdir(run)) == ["last.pt", "train.log"]  # the lock went with the run

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / RUN_LOCK).write_text("my notes")
    one_line_refusal(capsys, train_main([*args[:5], str(mine), *args[6:]]), "not an amnet lock")
    assert os.listdir(mine) == [RUN_LOCK] and (mine / RUN_LOCK).read_text() == "my notes"


def test_a_file_system_without_locks_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    """On a file system that cannot lock (flock gives ENOLCK on some network mounts) the command
    still runs, says so, and leaves no lock file."""
    import errno
    import fcntl

    from amnet.fileio import exclusive_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with exclusive_lock(tmp_path / ".lock", "busy"):
        assert not (tmp_path / ".lock").exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / '.lock'}: cannot lock ({os.strerror(errno.ENOLCK)}); going on without the lock"
    ]
    assert os.listdir(tmp_path) == []


def test_one_writer_per_dataset_folder(tmp_path, capsys):
    from clitools import lock_held_elsewhere

    from amnet.cli.synth import main as synth_main

    data = tmp_path / "data"
    data.mkdir()
    args = ["--out", str(data), "--preset", "tiny", "--videos", "2", "--dim", "8", "-q"]
    with lock_held_elsewhere(data / ".amnet-synth.lock") as pid:
        one_line_refusal(capsys, synth_main([*args, "--overwrite"]),
                         f"{data}: another amnet-synth is writing this dataset", f"(pid {pid})")  # fmt: skip
    assert os.listdir(data) == [".amnet-synth.lock"]  # nothing of the refused run
    assert synth_main([*args, "--overwrite"]) == 0
    assert sorted(os.listdir(data)) == ["annotations.json", "features"]
