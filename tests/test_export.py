"""ONNX export: the graph, its metadata, parity with PyTorch (raw outputs and detections), the
TensorRT 10 compatibility check, INT8, and the command line's handling of bad input.

Exports run once per session (fixtures) and share a tiny model; the script is run once as a
separate process, the way users run it (``python export/to_onnx.py``), and its refusals through
``main(argv)``. Non-default options (``--opset 20 --no-ema``) are test_cli_export's.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from clitools import run_main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from amnet.checkpoint import load_model, save_checkpoint  # noqa: E402
from amnet.config import config_from_dict, load_config  # noqa: E402
from amnet.deploy import Detector  # noqa: E402
from amnet.deploy.backend_onnx import open_session  # noqa: E402
from amnet.errors import AMNetError  # noqa: E402
from amnet.export.quantize import conv1d_as_matmul  # noqa: E402
from amnet.export.to_onnx import compare_outputs  # noqa: E402
from amnet.export.trt_compat import check_tensorrt_compatibility, supported_ops  # noqa: E402
from amnet.fileio import file_sha256  # noqa: E402
from amnet.inference import detect_video, predict_chunks  # noqa: E402
from amnet.metadata import read_onnx_metadata  # noqa: E402
from amnet.model import AMNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# One pytest worker runs this module (scripts/test.sh runs -n auto), so that
# its exported and trained models are made once.
pytestmark = pytest.mark.xdist_group("test_export")
TINY = ROOT / "configs" / "tiny_cpu.yaml"
CLASSES = ["a", "b", "c", "d", "e"]
# Subprocesses get one math thread each: the test machine's cores are shared, and torch's
# thread pool slows down by orders of magnitude when oversubscribed.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_script(*args: str, script: str = "export/to_onnx.py", cwd: Path = ROOT):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=ENV,
    )


def export_cli(*args: str) -> subprocess.CompletedProcess:
    """``python export/to_onnx.py ARGS`` as ``main(argv)`` in this process (the script itself
    runs in the ``exported`` fixture and the entry-point test)."""
    return run_main("amnet.export.to_onnx", *args)


def assert_one_line_error(proc: subprocess.CompletedProcess, prog: str = "to_onnx") -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{prog}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An initialised tiny model (no EMA) with non-trivial input statistics."""
    cfg = load_config(TINY)
    torch.manual_seed(0)
    model = AMNet.from_config(cfg)
    gen = torch.Generator().manual_seed(1)
    model.set_input_statistics(
        torch.rand(cfg["dataset"]["input_dim"], generator=gen) * 0.2,
        torch.rand(cfg["dataset"]["input_dim"], generator=gen) * 0.3 + 0.05,
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, config=cfg, class_names=CLASSES, model=model.state_dict(), ema=None)
    return path


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_ckpt):
    """``python /path/to/export/to_onnx.py --ckpt /path/tiny.pt --out model.onnx --int8`` run
    in another folder than the repository's: the script works from anywhere, and a relative
    ``--out`` is relative to where it runs."""
    folder = tmp_path_factory.mktemp("onnx")
    proc = run_script("--ckpt", str(tiny_ckpt), "--out", "model.onnx", "--int8", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder / "model.onnx", proc


@pytest.fixture(scope="session")
def trained(models):
    """The session's tiny model trained with EMA (conftest ``models``): its checkpoint, its
    ONNX export (written only if its parity check passed) and its dataset."""
    return models["pt"], models["onnx"], models["data"]


def expected_points(t: int, levels: int = 6) -> int:
    padded = -(-t // 2 ** (levels - 1)) * 2 ** (levels - 1)
    return sum(padded // 2**level for level in range(levels))


# --- the graph and its metadata ---------------------------------------------------------------


def test_script_writes_a_checked_model_and_reports(exported):
    out, proc = exported
    assert out.is_file()
    assert "onnx.checker: ok" in proc.stdout
    assert "TensorRT 10 compatibility: ok" in proc.stdout
    fp32_part = proc.stdout.split("INT8 vs PyTorch")[0]
    rows = [line for line in fp32_part.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 5 and all(r.endswith("| yes |") for r in rows), proc.stdout
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    assert leftovers(out.parent) == []


def test_graph_interface(exported):
    model = onnx.load(str(exported[0]))
    onnx.checker.check_model(model)
    assert {o.domain: o.version for o in model.opset_import}.get("") == 17

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: v for v in model.graph.input}
    outputs = {v.name: v for v in model.graph.output}
    assert list(inputs) == ["features", "lengths"]
    assert list(outputs) == ["scores", "segments"]
    assert inputs["features"].type.tensor_type.elem_type == TensorProto.FLOAT
    assert inputs["lengths"].type.tensor_type.elem_type == TensorProto.INT64
    assert dims(inputs["features"]) == ["batch", "time", 2048]
    assert dims(inputs["lengths"]) == ["batch"]
    assert dims(outputs["scores"])[0] == "batch" and dims(outputs["scores"])[2] == 5
    assert dims(outputs["segments"])[0] == "batch" and dims(outputs["segments"])[2] == 2
    # What the attention knows in advance is a number in the graph, not computed from shapes
    # (DESIGN §5): no Pow (the scale), and the folded graph stays small, since loads, OpenVINO
    # compiles and quantization grow with its node count (1,269 measured; 1,677 before).
    ops = [n.op_type for n in model.graph.node]
    assert "Pow" not in ops and len(ops) <= 1_350, len(ops)


def test_metadata_round_trip(exported, tiny_ckpt):
    path = exported[0]
    meta = read_onnx_metadata(path)
    assert meta == read_onnx_metadata(onnx.load(str(path)))
    assert meta == read_onnx_metadata(open_session(path))
    _, cfg, names = load_model(tiny_ckpt)
    assert meta["config"] == config_from_dict(cfg)
    assert meta["class_names"] == names == CLASSES
    assert (meta["fps"], meta["feature_stride"], meta["num_frames"]) == (30.0, 4, 16)
    assert (meta["max_seq_len"], meta["chunk_overlap"], meta["pad_multiple"]) == (256, 0.25, 32)
    assert (meta["input_dim"], meta["num_classes"], meta["opset"]) == (2048, 5, 17)
    assert meta["checkpoint_sha256"] == file_sha256(tiny_ckpt)
    assert meta["weights"] == "model"  # the checkpoint has no EMA
    import amnet

    assert meta["amnet_version"] == amnet.__version__


def test_metadata_of_other_files_is_refused(tmp_path):
    plain = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    with pytest.raises(AMNetError, match="not an AMNet model export"):
        read_onnx_metadata(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffnot a protobuf" * 10)
    with pytest.raises(AMNetError, match="not a readable ONNX model"):
        read_onnx_metadata(tmp_path / "junk.onnx")
    with pytest.raises(AMNetError, match="not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")


@pytest.mark.parametrize("batch", [1, 3])
def test_dynamic_batch_and_time_match_pytorch(exported, tiny_ckpt, batch):
    session = open_session(exported[0])
    model, _, _ = load_model(tiny_ckpt)
    rng = np.random.default_rng(batch)
    for t in (1, 2, 31, 32, 33, 37, 100, 255, 256):
        lengths = np.array([t, max(1, t - 13), max(1, t // 3)][:batch], dtype=np.int64)
        feats = rng.gamma(1.0, 0.15, size=(batch, t, 2048)).astype(np.float32)
        with torch.no_grad():
            ref = model.predict(torch.from_numpy(feats), torch.from_numpy(lengths))
        got = session.run(None, {"features": feats, "lengths": lengths})
        assert got[0].shape == (batch, expected_points(t), 5)
        assert got[1].shape == (batch, expected_points(t), 2)
        ds, dg = compare_outputs((ref[0].numpy(), ref[1].numpy()), (got[0], got[1]))
        assert ds <= 1e-4 and dg <= 1e-3, (t, ds, dg)
        # Padded points score exactly 0 in both, so post-processing never sees them.
        assert np.array_equal(got[0] == 0, ref[0].numpy() == 0)


def test_int8_model_keeps_metadata_and_stays_close(exported):
    out, proc = exported
    int8 = out.with_name("model.int8.onnx")
    assert int8.is_file() and f"wrote {int8.name}" in proc.stdout  # as --out was given
    meta = read_onnx_metadata(int8)
    assert meta["quantization"].startswith("dynamic int8")
    assert {
        k: v for k, v in meta.items() if k not in ("quantization", "source_sha256")
    } == read_onnx_metadata(out)
    assert "Conv rewritten as MatMul" in meta["quantization"]
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "MatMulInteger" in ops and "Conv" not in ops
    feats = np.random.default_rng(0).gamma(1.0, 0.15, size=(2, 90, 2048)).astype(np.float32)
    feeds = {"features": feats, "lengths": np.array([90, 50], dtype=np.int64)}
    ref = open_session(out).run(None, feeds)
    got = open_session(int8).run(None, feeds)
    assert np.abs(ref[0] - got[0]).max() < 0.05
    # INT8 graphs are for CPUs: the TensorRT check must say so.
    assert any("MatMulInteger" in p for p in check_tensorrt_compatibility(int8))


def test_int8_attention_products_quantized_on_request(exported, tmp_path):
    from amnet.export.quantize import quantize_int8

    out = exported[0]
    int8 = quantize_int8(out, tmp_path / "attn.int8.onnx", attention=True)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "MatMul" not in ops and "MatMulInteger" in ops  # activation x activation too
    assert "attention products too" in read_onnx_metadata(int8)["quantization"]
    feats = np.random.default_rng(1).gamma(1.0, 0.15, size=(1, 120, 2048)).astype(np.float32)
    feeds = {"features": feats, "lengths": np.array([120], dtype=np.int64)}
    ref = open_session(out).run(None, feeds)
    got = open_session(int8).run(None, feeds)
    assert np.abs(ref[0] - got[0]).max() < 0.05


def test_conv_rewrite_is_exact_in_fp32(exported, tmp_path):
    model = onnx.load(str(exported[0]))
    convs = sum(n.op_type == "Conv" for n in model.graph.node)
    assert conv1d_as_matmul(model) == convs > 0
    assert not any(n.op_type == "Conv" for n in model.graph.node)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    a, b = open_session(exported[0]), open_session(tmp_path / "rewritten.onnx")
    rng = np.random.default_rng(3)
    for lengths in ([1], [2], [45, 30, 1], [256, 200]):
        feats = rng.gamma(1.0, 0.15, size=(len(lengths), max(lengths), 2048)).astype(np.float32)
        feeds = {"features": feats, "lengths": np.asarray(lengths, dtype=np.int64)}
        ds, dg = compare_outputs(tuple(a.run(None, feeds)), tuple(b.run(None, feeds)))
        assert ds <= 1e-5 and dg <= 1e-3, (lengths, ds, dg)


def test_no_module_in_export_shadows_an_installed_package():
    names = [
        p.stem for p in (ROOT / "src" / "amnet" / "export").glob("*.py") if p.stem != "__init__"
    ]
    assert {"onnx", "tensorrt", "triton"}.isdisjoint(names)
    for name in names:
        # export/ is not on sys.path here, so any hit is a real top-level module of that name.
        assert importlib.util.find_spec(name) is None, name


def test_module_and_script_entry_points(tmp_path):
    mod = subprocess.run(
        [sys.executable, "-m", "amnet.export.to_onnx", "--help"],
        capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=120,
    )  # fmt: skip
    assert mod.returncode == 0 and "--opset" in mod.stdout
    script = run_script("--help", script="export/to_tensorrt.py", cwd=tmp_path)
    assert script.returncode == 0 and "--max-batch" in script.stdout


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", ["8", "10", "21"])
def test_an_opset_the_export_cannot_take_is_refused_before_export(tiny_ckpt, tmp_path, opset):
    """Below 11 the model's graph cannot be written (computed padding); past 20 TensorRT 10's
    parser cannot read it."""
    out = tmp_path / "m.onnx"
    proc = export_cli("--ckpt", str(tiny_ckpt), "--out", str(out), "--opset", opset)
    line = assert_one_line_error(proc)
    assert f"--opset {opset}" in line and "(the export takes 11..20)" in line
    assert proc.returncode == 2 and not out.exists() and leftovers(tmp_path) == []


def test_bad_checkpoints(tmp_path):
    cases = {tmp_path / "missing.pt": "checkpoint not found"}
    # Garbage bytes: seed 0 fails as a bad zip/pickle; with seeds 17 and 62 the unpickler itself
    # trips (IndexError, KeyError), which must still be a one-line error.
    for seed in (0, 17, 62):
        corrupt = tmp_path / f"corrupt{seed}.pt"
        corrupt.write_bytes(np.random.default_rng(seed).bytes(2048))
        cases[corrupt] = "not a readable checkpoint"
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    cases[foreign] = "not an AMNet checkpoint"
    # An exported model where the checkpoint goes (a real ONNX file; an engine's bytes).
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "model.onnx"))
    (tmp_path / "model.plan").write_bytes(np.random.default_rng(1).bytes(512))
    for exported in (tmp_path / "model.onnx", tmp_path / "model.plan"):
        cases[exported] = "an exported model, not a checkpoint (give the .pt file amnet-train"
    for ckpt, message in cases.items():
        out = tmp_path / "m.onnx"
        line = assert_one_line_error(export_cli("--ckpt", str(ckpt), "--out", str(out)))
        assert message in line and str(ckpt) in line
        assert not out.exists() and leftovers(tmp_path) == []


def _can_create_in(folder: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def test_unwritable_outputs(tiny_ckpt, tmp_path):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    cases = {
        tmp_path / "no" / "such" / "m.onnx": "does not exist",
        tmp_path / "a_file" / "m.onnx": "does not exist",
        tmp_path / "a_dir": "is a folder",
    }
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases[ro / "m.onnx"] = "cannot write"
    elif not _can_create_in(Path("/sys")):
        # root ignores permission bits; sysfs still refuses new files.
        cases[Path("/sys/amnet-export-test.onnx")] = "cannot write"
    for out, message in cases.items():
        line = assert_one_line_error(export_cli("--ckpt", str(tiny_ckpt), "--out", str(out)))
        assert message in line, line
        assert not out.is_file()
    assert leftovers(tmp_path) == []


def test_failed_parity_exits_nonzero_and_leaves_no_file(tiny_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    # -q silences the report, not the error.
    proc = export_cli("--ckpt", str(tiny_ckpt), "--out", str(out), "--scores-atol", "1e-12", "-q")
    line = assert_one_line_error(proc)
    assert proc.returncode == 1 and "ONNX Runtime differs from PyTorch" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_quiet_export_writes_the_checked_model_and_prints_nothing(tiny_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    proc = export_cli("--ckpt", str(tiny_ckpt), "--out", str(out), "-q")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert read_onnx_metadata(out)["checkpoint_sha256"]


# --- TensorRT compatibility check --------------------------------------------------------------


def _with_extra_node(model, node, graph=None):
    graph = graph if graph is not None else model.graph
    graph.node.append(node)
    return model


def test_tensorrt_check_passes_the_export_and_catches_unsupported_ops(exported):
    base = onnx.load(str(exported[0]))
    assert check_tensorrt_compatibility(base) == []
    assert check_tensorrt_compatibility(exported[0]) == []
    assert "Unique" not in supported_ops() and "LayerNormalization" in supported_ops()

    # A top-level node of an operator TensorRT does not import.
    top = _with_extra_node(copy.deepcopy(base), helper.make_node("Unique", ["scores"], ["u"], name="injected"))  # fmt: skip
    problems = check_tensorrt_compatibility(top)
    assert len(problems) == 1 and "Unique" in problems[0] and "injected" in problems[0]

    # The same operator hidden in an If branch.
    branch = helper.make_graph(
        [helper.make_node("Unique", ["scores"], ["u2"], name="in_branch")],
        "then",
        [],
        [helper.make_tensor_value_info("u2", TensorProto.FLOAT, None)],
    )
    cond = helper.make_node(
        "If", ["c"], ["r"], name="if", then_branch=branch, else_branch=copy.deepcopy(branch)
    )
    nested = _with_extra_node(copy.deepcopy(base), cond)
    assert any("Unique (2 node(s)" in p for p in check_tensorrt_compatibility(nested))

    # Inside a model-local function (inlined before checking), and a custom-domain operator.
    func = helper.make_function(
        "amnet.test",
        "Wrap",
        ["x"],
        ["y"],
        [
            helper.make_node("NonMaxSuppression", ["x"], ["z"]),
            helper.make_node("MatMulInteger", ["x", "x"], ["y"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    with_func = copy.deepcopy(base)
    with_func.functions.append(func)
    with_func.opset_import.append(helper.make_opsetid("amnet.test", 1))
    _with_extra_node(with_func, helper.make_node("Wrap", ["scores"], ["w"], domain="amnet.test"))
    _with_extra_node(with_func, helper.make_node("Fancy", ["scores"], ["f"], domain="acme"))
    problems = check_tensorrt_compatibility(with_func)
    assert any("MatMulInteger" in p for p in problems)
    assert not any("NonMaxSuppression" in p for p in problems)
    assert any("acme::Fancy" in p for p in problems)

    # Opsets outside TensorRT 10's parser range.
    for version in (8, 21):
        bad = copy.deepcopy(base)
        for entry in bad.opset_import:
            if entry.domain == "":
                entry.version = version
        assert any(f"opset {version}" in p for p in check_tensorrt_compatibility(bad))


# --- detections: PyTorch and ONNX Runtime through the same chunk policy -------------------------


def assert_same_detections(ref, got, name: str) -> None:
    """Same count, and every detection of ``ref`` has its own twin in ``got``: same label, score
    within 1e-5, bounds within 1e-3 s. Detections whose scores tie to ~1e-7 may swap places
    between backends, so the twins are matched, not compared by rank; ranks may differ only
    among such ties."""
    assert len(got) == len(ref), name
    unused = np.ones(len(got), dtype=bool)
    for i in range(len(ref)):
        close = (
            unused
            & (got.labels == ref.labels[i])
            & (np.abs(got.scores - ref.scores[i]) <= 1e-5)
            & (np.abs(got.segments - ref.segments[i]).max(axis=1) <= 1e-3)
        )
        j = np.flatnonzero(close)
        assert len(j), f"{name}: detection {i} of PyTorch has no twin in ONNX Runtime"
        unused[j[0]] = False
        assert abs(got.scores[j[0]] - got.scores[i]) <= 1e-5, f"{name}: rank {i} moved"


def test_detections_match_pytorch_on_short_exact_and_chunked_videos(trained):
    ckpt, onnx_path, data = trained
    assert read_onnx_metadata(onnx_path)["weights"] == "ema"
    model, cfg, _ = load_model(ckpt)
    detector = Detector(onnx_path)
    max_len = cfg["dataset"]["max_seq_len"]
    feats = [np.load(p) for p in sorted((data / "features").glob("*.npy"))]
    long = np.concatenate(feats)
    videos = {
        "shorter": next(f for f in feats if len(f) < max_len),
        "equal": long[:max_len],
        "chunked": long[: 2 * max_len + 77],
    }
    fps, stride, frames = 30.0, 4, 16
    for name, f in videos.items():
        duration = (len(f) * stride + frames) / fps
        chunks_onnx = detector.run_chunks(f)
        chunks_torch = predict_chunks(model, f, max_len, cfg["test_cfg"]["chunk_overlap"])
        assert [c[2] for c in chunks_onnx] == [c[2] for c in chunks_torch]
        assert (len(chunks_onnx) > 1) == (name == "chunked")
        ref = detect_video(model, f, cfg, duration)
        got = detector.detect_raw(f, duration)
        assert len(ref) > 0, name
        assert_same_detections(ref, got, name)
