"""Test set-up. The Triton interpreter must be switched on before triton is first imported,
so that the kernels run on this CPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest worker per core (scripts/test.sh runs ``-n auto``): one math thread each, set
    # before torch is imported; an oversubscribed torch thread pool is many times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]


def _interpret_as_compiled() -> None:
    """Run interpreted kernels with the compiled kernels' overflow semantics.

    Triton's interpreter checks every 32-bit integer add, sub and mul for overflow (in int64,
    with an assertion): a debug aid that compiled kernels leave out unless built with debug on,
    and a third of the interpreter's time. The tests' indices stay far below 2**31, where the
    check cannot fire; the interpreter exposes no option for it, so it is switched off on the
    interpreter's builder where that has the field."""
    if os.environ.get("TRITON_INTERPRET") != "1" or "triton" not in sys.modules:
        return
    from triton.runtime import interpreter

    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if dataclasses.is_dataclass(options) and getattr(options, "sanitize_overflow", False):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    # The kernel tests import triton when collected: no import here for runs without them.
    _interpret_as_compiled()


def shared(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], dict[str, Path]]
) -> dict[str, Path]:
    """``build(folder)`` once per test run, for every pytest-xdist worker: the first worker to
    get here builds it in the run's shared temporary folder while the others wait, then all
    read it. Fixtures built this way are read-only for the tests."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    # This run's folder, shared by its workers (each has its own folder under it).
    root = tmp_path_factory.getbasetemp().parent
    folder, done = root / name, root / f"{name}.done.json"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            built = build(folder)
            done.write_text(json.dumps({k: str(v) for k, v in built.items()}))
    return {k: Path(v) for k, v in json.loads(done.read_text()).items()}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """The tiny synthetic set (``amnet-synth --preset tiny --seed 0``: 80 training and 40 test
    videos of 96-300 snippets, 5 classes), written once per test run and read-only after."""

    def build(out: Path) -> dict[str, Path]:
        from amnet.cli.synth import main as synth_main

        assert synth_main(["--out", str(out), "--preset", "tiny", "--seed", "0", "--quiet"]) == 0
        return {"data": out}

    return shared(tmp_path_factory, "tiny_dataset", build)["data"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict[str, Path]:
    """An initialised tiny AMNet (``configs/tiny_cpu.yaml``, seed 0, the tiny preset's class
    names) as a checkpoint and as its ONNX export; for tests of the command line and runtime
    that need a real model but not a trained one."""
    return shared(tmp_path_factory, "tiny_model", _build_tiny_model)


def _build_tiny_model(base: Path) -> dict[str, Path]:
    import torch

    from amnet.checkpoint import save_checkpoint
    from amnet.config import load_config
    from amnet.export.to_onnx import export_onnx
    from amnet.model import AMNet
    from amnet.synth import preset_class_names

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
    return shared(tmp_path_factory, "deploy_models", _build_trained_model)


def _build_trained_model(base: Path) -> dict[str, Path]:
    import torch

    from amnet.config import load_config
    from amnet.export.to_onnx import export_onnx
    from amnet.synth import draw_layout, preset_class_names, write_dataset
    from amnet.train import train

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


# The tests that use the shared Ray cluster (``cluster``) and have not ended yet in this
# process: the cluster stops after the last of them. Idle, its daemons still take about a tenth
# of a core, and the Ray tests run early (their group is collected first).
_cluster_users: set[str] = set()


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    users = [i for i in items if "cluster" in getattr(i, "fixturenames", ())]
    _cluster_users.update(i.nodeid for i in users)
    # Ray modules that start their own cluster and have no test on the shared one go last, so
    # that they do not run beside the shared cluster idling until its last user is done. (The
    # sort is stable; pytest-xdist's workers all collect this order.)
    shared = {i.module for i in users if getattr(i, "module", None) is not None}

    def private_ray_module(item: pytest.Item) -> bool:
        group = item.get_closest_marker("xdist_group")
        return bool(
            group and group.args == ("ray",) and getattr(item, "module", None) not in shared
        )

    items.sort(key=private_ray_module)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    if item.nodeid in _cluster_users:
        _cluster_users.discard(item.nodeid)
        if not _cluster_users and "ray" in sys.modules:
            sys.modules["ray"].shutdown()  # the fixture's own shutdown at the end is then a no-op


# The Ray modules skip at set-up, not at collection: only the worker that runs their group
# (xdist_group "ray") then imports Ray, which takes 2-3 CPU s with Serve.
@pytest.fixture(scope="session")
def ray_installed() -> Any:
    return pytest.importorskip("ray", reason="the [scale] extra (Ray) is not installed")


@pytest.fixture(scope="session")
def ray_serve(ray_installed: Any) -> Any:
    return pytest.importorskip("ray.serve", reason="the [scale] extra (Ray Serve) is not installed")


@pytest.fixture(scope="session")
def cluster(ray_installed: Any) -> Iterator[str]:
    """A running Ray cluster, as a user's own that ``--ray-address`` joins (its address): started
    once for the Ray tests (their xdist group keeps them on one worker), with this process as
    its first driver, and stopped with its processes after."""
    ray = ray_installed
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)  # fmt: skip
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
