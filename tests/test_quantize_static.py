"""Static INT8 (QDQ) export: calibration windows cut as inference cuts them, the command line,
the model on ONNX Runtime and on OpenVINO, and bad requests as one-line errors with nothing
written."""

from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from amnet.cli.export import main as export_main  # noqa: E402
from amnet.data import make_dataset  # noqa: E402
from amnet.deploy import Detector  # noqa: E402
from amnet.deploy.backend_onnx import open_session  # noqa: E402
from amnet.errors import AMNetError  # noqa: E402
from amnet.export.quantize import (  # noqa: E402
    attention_products,
    calibration_windows,
    quantize_int8_static,
)
from amnet.fileio import load_features  # noqa: E402
from amnet.metadata import read_onnx_metadata  # noqa: E402
from amnet.postprocess import plan_chunks  # noqa: E402

# One pytest worker runs this module (scripts/test.sh runs -n auto), so that
# its model is quantized once.
pytestmark = pytest.mark.xdist_group("test_quantize_static")

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="needs the [openvino] extra"
)


def training_videos(models) -> list[np.ndarray]:
    from amnet.checkpoint import load_model

    _, cfg, names = load_model(models["pt"])
    data = make_dataset(cfg, models["data"], "train_split", False, names)
    return [load_features(data.feature_path(v.video_id), 2048) for v in data.videos]


def quantized_products(path) -> set[str]:
    """Names of the MatMul and Conv nodes whose activation inputs are all dequantized."""
    graph = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    weights = {t.name for t in graph.initializer}
    return {
        n.name
        for n in graph.node
        if n.op_type in ("MatMul", "Conv")
        and all(producer.get(i) == "DequantizeLinear" for i in n.input[:2] if i not in weights)
    }


@pytest.fixture(scope="module")
def static_model(models, tmp_path_factory):
    """``amnet-export onnx --int8 static`` on the tiny training set, 2 calibration windows:
    the fp32 model, the static INT8 model and what the command printed."""
    out = tmp_path_factory.mktemp("static") / "model.onnx"
    argv = ["onnx", "--ckpt", str(models["pt"]), "--out", str(out), "--int8", "static",
            "--calibration", str(models["data"]), "--calibration-windows", "2"]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert export_main(argv) == 0
    return out, out.with_name("model.int8.onnx"), printed.getvalue()


def test_calibration_windows_are_the_inference_windows_taken_in_turn():
    rng = np.random.default_rng(0)
    videos = [rng.random((n, 3), dtype=np.float32) for n in (700, 0, 90, 300)]
    windows = calibration_windows(iter(videos), 256, 0.25, 100)
    expected = []
    plans = [[v[s:e] for s, e in plan_chunks(len(v), 256, 0.25)] for v in videos if len(v)]
    while any(plans):  # round-robin over the videos, each video's windows in order
        for plan in plans:
            if plan:
                expected.append(plan.pop(0))
    assert len(windows) == len(expected) == 4 + 1 + 2
    for (x, lengths), ref in zip(windows, expected, strict=True):
        assert x.dtype == np.float32 and x.shape == (1, *ref.shape)
        assert np.array_equal(x[0], ref) and lengths.tolist() == [len(ref)]
    # `count` caps the set and spreads it over videos: one window of each before a second one.
    few = calibration_windows(iter(videos), 256, 0.25, 3)
    assert [int(lengths[0]) for _, lengths in few] == [256, 90, 256]
    for bad in ([], [np.zeros((0, 3), np.float32)]):
        with pytest.raises(ValueError, match="at least one non-empty video"):
            calibration_windows(bad, 256, 0.25, 4)
    with pytest.raises(ValueError, match="at least one window"):
        calibration_windows(videos, 256, 0.25, 0)


def test_static_model_is_qdq_with_metadata_and_close_on_training_features(models, static_model):
    fp32, int8, _ = static_model
    meta = read_onnx_metadata(int8)
    assert meta["quantization"].startswith("static int8 QDQ")
    assert "calibrated on 2 windows" in meta["quantization"]
    assert {
        k: v for k, v in meta.items() if k not in ("quantization", "source_sha256")
    } == read_onnx_metadata(fp32)
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "DynamicQuantizeLinear" not in ops
    # Every Linear MatMul and Conv reads dequantized inputs; the attention products (both
    # inputs activations) stay float unless asked for.
    assert "attention products kept float" in meta["quantization"]
    assert quantized_products(int8) == (
        {n.name for n in onnx.load(str(int8)).graph.node if n.op_type in ("MatMul", "Conv")}
        - set(attention_products(onnx.load(str(fp32))))
    )
    a, b = Detector(fp32, intra_op_threads=1), Detector(int8, intra_op_threads=1)
    # What runs says so (amnet-infer --describe), and names the checkpoint of the fp32 model.
    assert b.describe()["quantization"] == meta["quantization"]
    assert b.describe()["checkpoint_sha256"] == a.describe()["checkpoint_sha256"] is not None
    for video in training_videos(models)[:3]:
        ref, got = a.detect_raw(video), b.detect_raw(video)
        assert len(got.scores) > 0
        # The top detection is the same class at nearly the same time and score.
        assert got.labels[0] == ref.labels[0]
        assert abs(got.scores[0] - ref.scores[0]) < 0.05
        assert np.abs(got.segments[0] - ref.segments[0]).max() < 1.0


@needs_openvino
def test_openvino_runs_the_static_model_like_onnx_runtime(models, static_model):
    import openvino

    int8 = static_model[1]
    vino = Detector(int8, runtime="openvino", intra_op_threads=1)
    assert vino.backend.quantized
    ort_session = open_session(int8)
    video = training_videos(models)[0][None, :200]
    lengths = np.array([200], dtype=np.int64)
    ref = ort_session.run(None, {"features": video, "lengths": lengths})
    scores, segments = vino.backend.run(video, lengths)
    assert np.abs(scores - ref[0]).max() < 0.05
    assert np.abs(segments - ref[1]).max() < 2.0
    # The full window runs on the static-shape model here too (DESIGN §6.2), and with the
    # float remainder in bf16 where the CPU has it (the fastest CPU path measured).
    full = np.concatenate(training_videos(models))[None, : vino.backend.window]
    lengths = np.array([full.shape[1]], dtype=np.int64)
    ref = ort_session.run(None, {"features": full, "lengths": lengths})
    detectors = [vino]
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        detectors.append(Detector(int8, runtime="openvino", precision="bf16", intra_op_threads=1))
    assert [d.describe()["precision"] for d in detectors] == ["fp32", "bf16"][: len(detectors)]
    for detector in detectors:
        assert detector.backend.static is not None
        scores, segments = detector.backend.run(full, lengths)
        assert np.abs(scores - ref[0]).max() < 0.05
        assert np.abs(segments - ref[1]).max() < 2.0


@needs_openvino
def test_openvino_refuses_a_static_model_it_computes_differently(static_model, monkeypatch):
    from amnet.deploy import backend_openvino

    monkeypatch.setitem(backend_openvino.PARITY_TOLERANCE, "int8", (0.0, 0.0))
    with pytest.raises(AMNetError, match=r"OpenVINO \(fp32\) disagrees with ONNX Runtime"):
        Detector(static_model[1], runtime="openvino")


def test_static_parity_is_reported_on_training_windows_it_was_not_calibrated_on(
    models, static_model
):
    """The command prints INT8-vs-fp32 parity on the two training windows after the ones it
    calibrated on."""
    title = "INT8 vs PyTorch fp32 on training windows (informational):"
    table = static_model[2].split(title)[1].strip().splitlines()[2:]  # after the header
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table]
    held_out = calibration_windows(training_videos(models), 256, 0.25, 4)[2:]
    assert [int(row[2]) for row in rows] == [int(lengths[0]) for _, lengths in held_out]
    assert all(float(row[3]) < 0.05 for row in rows)  # max |delta scores|


def test_attention_products_are_quantized_on_request(models, static_model, tmp_path):
    fp32 = static_model[0]
    windows = calibration_windows(training_videos(models), 256, 0.25, 3)
    int8 = quantize_int8_static(fp32, tmp_path / "all.int8.onnx", windows, attention=True)
    products = attention_products(onnx.load(str(fp32)))
    assert products and set(products) <= quantized_products(int8)
    assert "kept float" not in read_onnx_metadata(int8)["quantization"]
    assert "calibrated on 3 windows" in read_onnx_metadata(int8)["quantization"]


def test_the_benchmark_runs_a_given_static_model_as_it_is(static_model, tmp_path):
    """``amnet-bench --engine model.int8.onnx`` (a static QDQ model) for the OpenVINO INT8
    backends: the model itself, never quantized a second time (that gave an invalid graph)."""
    from amnet.cli.bench import _static_int8

    fp32, static, _ = static_model
    assert _static_int8(static, tmp_path, []) == static  # no features needed: nothing to do
    assert _static_int8(fp32, tmp_path, []) == static  # the fp32 model's static sibling
    assert list(tmp_path.iterdir()) == []


def test_quantize_static_needs_windows(static_model, tmp_path):
    with pytest.raises(ValueError, match="at least one calibration window"):
        quantize_int8_static(static_model[0], tmp_path / "x.int8.onnx", [])
    assert list(tmp_path.iterdir()) == []


def test_a_quantized_graph_that_is_not_valid_onnx_is_not_written(models, tmp_path):
    """Called directly on an opset-12 graph, static INT8's per-channel nodes are invalid there
    (their axis is opset 13): refused before the file is published, as no runtime loads it."""
    from amnet.export.to_onnx import export_onnx

    src = tmp_path / "m12.onnx"
    export_onnx(models["pt"], src, opset=12, parity=False)
    windows = calibration_windows(training_videos(models)[:1], 256, 0.25, 1)
    with pytest.raises(ValueError, match=r"the quantized graph is not valid ONNX: .*axis"):
        quantize_int8_static(src, tmp_path / "m12.int8.onnx", windows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m12.onnx"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8", "static"], "static INT8 needs calibration features: --calibration"),
        (["--calibration", "{data}"], "a calibration set is for static INT8 only"),
        (["--int8", "--calibration", "{data}"], "a calibration set is for static INT8 only"),
        (["--int8", "static", "--calibration", "{tmp}/none"], "none"),
        (
            ["--int8", "static", "--calibration", "{data}", "--calibration-windows", "0"],
            "--calibration-windows must be a positive integer",
        ),
        (["--int8", "int4"], "argument --int8: invalid choice"),
        (
            ["--int8", "static", "--calibration", "{data}", "--opset", "12"],
            "--opset 12: static INT8 quantizes per channel, which needs opset 13 or later",
        ),
    ],
)
def test_bad_static_requests_are_one_line_and_write_nothing(
    models, tmp_path, capsys, extra, message
):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = ["onnx", "--ckpt", str(models["pt"]), "--out", str(out_dir / "m.onnx")]
    argv += [a.format(data=models["data"], tmp=tmp_path) for a in extra]
    try:
        code = export_main(argv)
    except SystemExit as exc:  # argparse's own errors (an unknown choice)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("amnet-export onnx: error: "), err
    assert message in err[0]
    assert list(out_dir.iterdir()) == []
