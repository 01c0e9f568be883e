"""``amnet-export onnx|tensorrt``: the export tools as one console command. (``python
export/to_onnx.py`` run from another folder is test_export's ``exported`` fixture.)"""

import os

import pytest

from amnet.cli.export import main as export_main
from amnet.metadata import read_onnx_metadata

onnx = pytest.importorskip("onnx")


def test_export_onnx_command_passes_its_options_through(models, tmp_path, capsys):
    """``amnet-export onnx`` with the non-default options: the highest opset TensorRT 10 parses,
    the raw weights of a checkpoint that has EMA weights, and the fp16 graph beside the fp32
    one. The export is checked (parity, TensorRT operators) like the default one."""
    import numpy as np

    from amnet.deploy import Detector
    from amnet.export.trt_compat import check_tensorrt_compatibility

    out = tmp_path / "raw20.onnx"
    argv = ["onnx", "--ckpt", str(models["pt"]), "--out", str(out), "--opset", "20", "--no-ema",
            "--fp16"]  # fmt: skip
    assert export_main(argv) == 0
    printed = capsys.readouterr().out
    assert "parity" in printed and "TensorRT 10 compatibility: ok" in printed
    meta = read_onnx_metadata(out)
    assert meta["num_classes"] == 5 and meta["opset"] == 20 and meta["weights"] == "model"
    model = onnx.load(str(out))
    assert {o.domain: o.version for o in model.opset_import}.get("") == 20

    # The fp16 graph: fp16 weights behind the same fp32 interface and metadata, within fp16
    # tolerances of PyTorch fp32 at every parity case, every operator one TensorRT parses.
    half = tmp_path / "raw20.fp16.onnx"
    assert "fp16 graph (ONNX Runtime) vs PyTorch fp32:" in printed and "| NO |" not in printed
    assert read_onnx_metadata(half) == {**meta, "precision": "fp16"}
    model16 = onnx.load(str(half))
    graph = model16.graph
    sizes = {1: 0, 10: 0}  # elements of FLOAT and FLOAT16 initializers
    for t in graph.initializer:
        if t.data_type in sizes:
            sizes[t.data_type] += int(np.prod(t.dims))
    assert sizes[10] > 0.99 * (sizes[1] + sizes[10])  # the weights; a few fp32 constants
    float32 = onnx.TensorProto.FLOAT
    assert graph.input[0].type.tensor_type.elem_type == float32  # features
    assert {o.type.tensor_type.elem_type for o in graph.output} == {float32}
    assert check_tensorrt_compatibility(model16) == []
    # ONNX Runtime runs it (as a Detector) to the fp32 model's detections.
    x = np.abs(np.random.default_rng(0).normal(0.0, 0.3, (300, 2048))).astype(np.float32)
    want, got = Detector(out).detect_raw(x, top_k=20), Detector(half).detect_raw(x, top_k=20)
    assert np.array_equal(want.labels, got.labels)
    np.testing.assert_allclose(got.scores, want.scores, atol=2e-3)
    np.testing.assert_allclose(got.segments, want.segments, atol=0.1)  # seconds


def test_the_files_of_an_export_appear_together_or_not_at_all(tiny_model, tmp_path, monkeypatch):
    """A failed check after the fp32 graph passed (here the fp16 graph's parity; a failed
    quantization or Ctrl-C take the same way out) leaves none of the files asked for: a model
    without the siblings the command promised, which a pipeline picks up by name, is a
    partial output."""
    from amnet.export import to_onnx

    monkeypatch.setattr(to_onnx, "FP16_SCORES_ATOL", 0.0)
    out = tmp_path / "m.onnx"
    with pytest.raises(
        to_onnx.ParityError, match=r"m\.fp16\.onnx: the fp16 graph differs.*nothing was written"
    ):
        to_onnx.export_onnx(tiny_model["pt"], out, fp16=True, int8=True)
    assert os.listdir(tmp_path) == []


def test_export_command_errors_are_one_line(tmp_path, capsys):
    assert export_main(["coreml"]) == 2
    assert export_main([]) == 2
    assert export_main(["onnx", "--ckpt", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("amnet-export onnx: error:") and "missing.pt" in err[-1]
    # The launcher's name is per call: the export tools keep their own in this process.
    from amnet.export import to_onnx, to_tensorrt

    assert to_onnx.main(["--ckpt", str(tmp_path / "missing.pt")]) == 2
    assert to_tensorrt.main(["--onnx", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("to_onnx: error:") and err[1].startswith("to_tensorrt: error:")
    assert not list(tmp_path.iterdir())
