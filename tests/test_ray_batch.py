"""``amnet-infer --workers N``: feature files on Ray, as users run it (the console script in a
separate process): on a local cluster the command starts itself, and on an existing cluster
(``--ray-address``), with the same output as one process and resumable shards."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Ray tests start clusters: run them on one pytest worker, one after another.
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.usefixtures("ray_installed")]

DIM = 2048


def test_the_ray_tests_share_one_worker(request):
    """Under ``pytest -n N --dist loadgroup`` (scripts/test.sh) every test of a group goes to
    one worker, which xdist marks with an ``@group`` suffix on the node id. Some pytest and
    pytest-xdist versions silently drop the grouping; then two Ray clusters would start at once
    and module fixtures would be built on every worker."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not a pytest-xdist worker with --dist loadgroup")
    assert request.node.nodeid.endswith("@ray"), request.node.nodeid


def infer(*args: str, timeout: int = 300, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess:  # fmt: skip
    script = shutil.which("amnet-infer", path=str(Path(sys.executable).parent))
    assert script, "amnet-infer is not installed next to this interpreter"
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, **(env or {})})  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Seven videos of 60-900 snippets (some longer than the 256-snippet window)."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i, length in enumerate((60, 900, 130, 400, 256, 75, 610)):
        x = np.abs(rng.normal(0.0, 0.2, (length, DIM))).astype(np.float32)
        for start in rng.integers(0, length - 20, size=max(length // 60, 1)):
            x[start : start + 15, : DIM // 8] += 0.6
        np.save(folder / f"video_{i}.npy", x)
    return folder


@pytest.fixture(scope="module")
def reference(models, corpus, tmp_path_factory) -> str:
    # One thread, as each worker has: ONNX Runtime's thread count moves the last bits. In this
    # process: the one-process run is the expected output, not what is under test here.
    from clitools import run_main

    out = tmp_path_factory.mktemp("reference") / "one_process.json"
    proc = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]), str(corpus),
                    "--threads", "1", "-q", "-o", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def test_workers_give_the_single_process_output(models, corpus, reference, tmp_path):
    out = tmp_path / "ray.json"
    proc = infer("--engine", str(models["onnx"]), str(corpus), "--workers", "2", "-q",
                 "-o", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == reference  # byte for byte, in input order
    assert not (tmp_path / "ray.json.parts").exists()  # shards removed once the output is in


def test_a_stopped_job_resumes_where_it_stopped(models, corpus, reference, cluster, tmp_path):
    files = tmp_path / "files"
    shutil.copytree(corpus, files)
    broken = files / "video_3.npy"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # truncated: the run stops, writes no output
    out = tmp_path / "out.json"
    args = ["--engine", str(models["onnx"]), str(files), "--workers", "2", "--ray-address", cluster]
    proc = infer(*args, "-q", "-o", str(out))
    assert proc.returncode == 2 and "video_3.npy" in proc.stderr
    assert not out.exists()
    shards = list((tmp_path / "out.json.parts").glob("*.jsonl"))
    assert len(shards) == 1
    assert len(shards[0].read_text().splitlines()) == 1 + 6  # header + the six good videos
    with open(shards[0], "a") as f:
        f.write('{"video_id": "video_9", "dura')  # a line cut short by a kill

    # Both refusals come before any Ray work, so they run in-process (no cluster to start).
    from clitools import run_main

    # Starting over without --resume-from is refused: it would throw the shards away.
    proc = run_main("amnet.deploy.infer_cli", *args, "-q", "-o", str(out))
    assert proc.returncode == 2 and "--resume-from" in proc.stderr
    # Other settings cannot reuse them.
    proc = run_main(
        "amnet.deploy.infer_cli", *args, "--min-score", "0.02", "-q", "--resume-from", str(out)
    )
    assert proc.returncode == 2 and "other settings" in proc.stderr
    # Another run writing this output: refused at once, its shards left as they are.
    from clitools import lock_held_elsewhere

    before = {p.name: p.read_bytes() for p in (tmp_path / "out.json.parts").iterdir()}
    with lock_held_elsewhere(tmp_path / ".out.json.lock") as pid:
        proc = run_main("amnet.deploy.infer_cli", *args, "-q", "--resume-from", str(out))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"amnet-infer: error: {out}: another amnet-infer --workers run is writing it; wait for "
        f"it to finish (pid {pid})\n"
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "out.json.parts").iterdir()} == before

    broken.write_bytes(good)
    proc = infer(*args, "-v", "--resume-from", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 6 of 7 videos done already" in proc.stderr
    assert out.read_text() == reference
    assert sorted(os.listdir(tmp_path)) == ["files", "out.json"]  # no shards, no lock file


def test_skip_bad_and_formats_on_workers(models, corpus, cluster, tmp_path):
    """Also: the cluster named by RAY_ADDRESS, as Ray's tools read it, is joined (on a Ray pod,
    starting a private one there with a CPU count was an error)."""
    files = tmp_path / "files"
    shutil.copytree(corpus, files)
    (files / "video_5.npy").write_bytes(b"not a numpy file")
    out = tmp_path / "out.jsonl"
    proc = infer("--engine", str(models["onnx"]), str(files), "--workers", "2", "--skip-bad",
                 "--format", "jsonl", "-v", "-o", str(out), env={"RAY_ADDRESS": cluster})  # fmt: skip
    assert f"joining the Ray cluster at {cluster}" in proc.stderr
    assert proc.returncode == 3 and "video_5.npy" in proc.stderr
    ids = [json.loads(line)["video_id"] for line in out.read_text().splitlines()]
    assert ids == [f"video_{i}" for i in (0, 1, 2, 3, 4, 6)]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resume-from", "x.json"], "go with --workers"),
        (["--ray-address", "127.0.0.1:1"], "go with --workers"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--workers", "2", "--plot", "pics"], "--plot does not apply"),
        (["--workers", "2", "--postprocess-workers", "2"], "--postprocess-workers does not apply"),
    ],
)
def test_bad_worker_options(models, corpus, extra, message):
    from clitools import run_main

    result = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]), str(corpus),
                      "-q", *extra)  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_class_scores_on_workers_give_the_single_process_output(corpus, cluster, tmp_path):
    """A one-class model's detections fused with video-level classes (amnet.class_scores): on
    Ray, fused once all videos are in, the same bytes as in one process."""
    import torch

    from amnet.checkpoint import save_checkpoint
    from amnet.config import load_config
    from amnet.export.to_onnx import export_onnx
    from amnet.model import AMNet

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml")
    cfg["dataset"]["num_classes"] = 1
    torch.manual_seed(0)
    ckpt = tmp_path / "agnostic.pt"
    net = AMNet.from_config(cfg)
    save_checkpoint(ckpt, config=cfg, class_names=["action"], model=net.state_dict(), ema=None)
    onnx = export_onnx(ckpt, tmp_path / "agnostic.onnx", parity=False).path
    rng = np.random.default_rng(1)
    scores = {f"video_{i}": rng.dirichlet(np.ones(3)).tolist() for i in range(7)}
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"results": scores, "class": ["A", "B", "C"]}))
    args = ["--engine", str(onnx), str(corpus), "--class-scores", str(classes), "-q"]
    one, ray = tmp_path / "one.json", tmp_path / "ray.json"
    assert infer(*args, "--threads", "1", "-o", str(one)).returncode == 0
    proc = infer(*args, "--workers", "2", "--ray-address", cluster, "-o", str(ray))
    assert proc.returncode == 0, proc.stderr
    assert ray.read_text() == one.read_text()
    labels = {d["label"] for ds in json.loads(one.read_text())["results"].values() for d in ds}
    assert labels and labels <= {"A", "B", "C"}


@pytest.mark.parametrize("address", ["closed-port", "nohost.invalid:6379"])
def test_an_unreachable_cluster_is_one_line_at_once_and_leaves_nothing(models, corpus, tmp_path,
                                                                       address):  # fmt: skip
    """Nothing listens at the address, or the host does not resolve: both commands say so in
    one line before asking Ray (which retries for minutes), and no shards or output are left."""
    import socket

    from clitools import run_main

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    if address == "closed-port":
        address = f"127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "out.json"
    for main, args in (
        ("amnet.deploy.infer_cli", [str(corpus), "--workers", "2", "-o", str(out)]),
        ("amnet.deploy.serve", ["--port", str(free_port())]),
    ):
        proc = run_main(main, "--engine", str(models["onnx"]), *args, "--ray-address", address)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1, proc.stderr
        assert f"cannot reach a Ray cluster at {address}" in proc.stderr
        assert "is it started" in proc.stderr  # our check, not Ray's failure minutes later
    assert list(tmp_path.iterdir()) == []


def test_a_shard_without_videos_is_not_left_behind(tmp_path):
    from amnet.deploy.ray_batch import ShardWriter, parts_dir
    from amnet.detections import Detections

    folder = parts_dir(tmp_path / "out.json")
    ShardWriter(folder, {"amnet_shard": 1}).close()
    assert not folder.exists()  # made by the writer, left empty: removed

    kept = ShardWriter(folder, {"amnet_shard": 1})
    kept.add("v", Detections.empty(), 1.0, 10)
    kept.close()
    ShardWriter(folder, {"amnet_shard": 1}).close()  # a resume that finished nothing more
    assert [p.name for p in folder.iterdir()] == [kept.path.name]


def test_a_file_where_the_shards_go_is_named_not_taken_for_shards(models, corpus, tmp_path):
    from clitools import run_main

    out = tmp_path / "out.json"
    (tmp_path / "out.json.parts").write_text("precious")
    for extra in ((), ("--resume-from", str(out))):
        proc = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]), str(corpus),
                        "--workers", "2", "-o", str(out), *extra)  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "out.json.parts: a file of that name is there" in proc.stderr
    assert (tmp_path / "out.json.parts").read_text() == "precious" and not out.exists()


@pytest.mark.parametrize(
    "line",
    [
        {"video_id": "v", "scores": [0.5]},  # cut short of its fields
        {
            "video_id": "v",
            "segments": [[1, 2, 3]],
            "scores": [0.5],
            "labels": [0],
            "duration": 9.0,
            "snippets": 10,
        },  # segments not [N, 2]
        {
            "video_id": "../v",
            "segments": [],
            "scores": [],
            "labels": [],
            "duration": 9.0,
            "snippets": 10,
        },  # an id that would become a path (--plot)
        ["not", "an", "object"],
    ],
    ids=["fields missing", "bad segments", "bad id", "not an object"],
)
def test_a_damaged_shard_line_is_one_line_naming_it(tmp_path, line):
    """A shard line that is whole JSON but not a finished video (edited, or written by another
    tool) is an error naming the shard and the line, not an internal error."""
    from amnet.deploy.ray_batch import ShardWriter, parts_dir, read_shards
    from amnet.detections import Detections
    from amnet.errors import AMNetError

    folder = parts_dir(tmp_path / "out.json")
    header = {"amnet_shard": 1}
    shard = ShardWriter(folder, header)
    shard.add("good", Detections.empty(), 1.0, 10)
    shard.close()
    with open(shard.path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    said = (
        "video id '../v' cannot name a file" if "../v" in str(line) else "line 3 is not a finished"
    )
    with pytest.raises(AMNetError, match=rf"{shard.path.name}: {re.escape(said)}"):
        read_shards(folder, header)


def test_workers_are_sized_to_the_cluster(models, corpus, reference, cluster, tmp_path, caplog):
    """More workers than the cluster has CPUs for run as many as fit, with a warning (the rest
    would wait for ever, and the files handed to them); a worker larger than the cluster is one
    line. (In-process: this process already runs the 2-CPU cluster's Ray session.)"""
    from clitools import run_main

    out = tmp_path / "out.json"
    args = ["--engine", str(models["onnx"]), str(corpus), "--ray-address", cluster]
    proc = run_main("amnet.deploy.infer_cli", *args, "--workers", "3", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "--workers 3 asks for 3 CPU(s) and the Ray cluster has 2: running 2" in caplog.text
    assert out.read_text() == reference
    proc = run_main("amnet.deploy.infer_cli", *args, "--workers", "1", "--threads", "3",
                    "-o", str(tmp_path / "big.json"))  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "amnet-infer: error: the Ray cluster has 2 CPU(s); one worker needs 3 (--threads)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_sigterm_after_joining_ray_still_runs_the_commands_clean_up(cluster):
    """Ray's start-up installs its own SIGTERM handler (a stack dump, an exit without clean-up);
    the commands' handler is put back, so SIGTERM still stops them as Ctrl-C does: here a
    process joins the cluster as amnet-infer and amnet-serve do, then gets SIGTERM."""
    script = f"""
import os, signal, sys
import ray
from amnet.cli.common import Terminated, sigterm_as_interrupt
from amnet.deploy.ray_batch import init_ray
with sigterm_as_interrupt():
    init_ray(ray, {cluster!r}, 1)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    except Terminated:
        print("clean-up ran")
    ray.shutdown()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "clean-up ran\n", proc.stderr[-2000:]


@pytest.mark.parametrize(
    "resources, workers, threads, gpu, expected",
    [
        ({"CPU": 8}, 4, 2, False, (4, {"num_cpus": 2})),
        ({"CPU": 2}, 3, 1, False, (2, {"num_cpus": 1})),  # as many as fit (and a warning)
        ({"CPU": 16, "GPU": 1}, 4, 1, True, (4, {"num_cpus": 1, "num_gpus": 0.25})),
        ({"CPU": 16, "GPU": 2}, 3, 1, True, (3, {"num_cpus": 1, "num_gpus": 0.5})),
        ({"CPU": 16, "GPU": 4}, 2, 1, True, (2, {"num_cpus": 1, "num_gpus": 1.0})),
        ({"CPU": 2}, 1, 3, False, "one worker needs 3"),
        ({"CPU": 16}, 2, 1, True, "the Ray cluster has none"),
    ],
)
def test_worker_resources_fit_the_cluster(resources, workers, threads, gpu, expected):
    """Workers take what fits: CPUs for their threads and, for a GPU model, an even share of
    the cluster's GPUs, so that none waits for resources that never come."""
    from amnet.deploy.ray_batch import worker_resources
    from amnet.errors import AMNetError

    if isinstance(expected, str):
        with pytest.raises(AMNetError, match=expected):
            worker_resources(resources, workers, threads, gpu, "--workers")
        return
    count, options = worker_resources(resources, workers, threads, gpu, "--workers")
    assert (count, options) == expected
    assert count * options.get("num_gpus", 0) <= resources.get("GPU", 0)


def test_a_worker_that_cannot_open_the_model_says_why(corpus, cluster, tmp_path):
    """On a node where the model is missing (no shared file system), the run stops in one line
    naming the node and the reason; Ray's own report names neither. (In-process: the driver's
    check of the model passed on its own node.)"""
    from amnet.deploy import ray_batch
    from amnet.errors import AMNetError

    missing = tmp_path / "model.onnx"
    files = [(str(corpus / "video_0.npy"), "video_0")]
    with pytest.raises(AMNetError) as caught:
        ray_batch.run_on_ray(str(missing), {"intra_op_threads": 1}, files, 1, cluster, print)
    message = str(caught.value)
    assert message.startswith("a Ray worker on ") and "\n" not in message and "\x1b" not in message
    assert f"cannot open the model: {missing}: model file not found" in message


def test_a_busy_cluster_runs_with_the_workers_that_are_up(models, corpus, cluster,
                                                          tmp_path):  # fmt: skip
    """One of the cluster's 2 CPUs is held by someone else's actor: of 2 workers one starts, and
    the run finishes on it (files are handed only to workers that are up), with the output of
    one process. (In-process, on this process's Ray session; bounded, so a regression fails
    instead of hanging the suite.)"""
    import threading

    import ray

    from amnet.deploy import ray_batch

    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ping.remote())  # up: one CPU is taken
    files = [(str(path), path.stem) for path in sorted(corpus.glob("*.npy"))]
    results: dict[str, object] = {}
    run = threading.Thread(target=ray_batch.run_on_ray, args=(
        str(models["onnx"]), {"intra_op_threads": 1}, files, 2, cluster,
        lambda video_id, result: results.__setitem__(video_id, result)))  # fmt: skip
    try:
        run.start()
        run.join(timeout=240)
        assert not run.is_alive(), "the run waited for a worker that could not start"
    finally:
        ray.kill(holder)
        run.join()
    assert sorted(results) == sorted(video_id for _, video_id in files)
    assert all(not isinstance(r, str) for r in results.values())


def test_a_gpu_run_needs_gpus_on_the_cluster_not_on_the_driver(models, corpus, cluster,
                                                              tmp_path):  # fmt: skip
    """--device cuda from a driver without a GPU (a Ray head node): the driver reads the model's
    contract on its CPU, and what decides is the cluster, here one without GPUs, in one line.
    Before, the driver's own missing GPU stopped every GPU run from such a node."""
    from clitools import run_main

    out = tmp_path / "out.json"
    proc = run_main("amnet.deploy.infer_cli", "--engine", str(models["onnx"]), str(corpus),
                    "--device", "cuda", "--workers", "1", "--ray-address", cluster,
                    "-o", str(out))  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr == "amnet-infer: error: the model runs on a GPU, and the Ray cluster has none\n"
    )
    assert list(tmp_path.iterdir()) == []
