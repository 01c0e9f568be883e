"""``amnet-export onnx|tensorrt``: the export tools as one console command. (``python
export/to_onnx.py`` run from another folder is test_export's ``exported`` fixture.)"""

import pytest

from amnet.cli.export import main as export_main
from amnet.metadata import read_onnx_metadata

onnx = pytest.importorskip("onnx")


def test_export_onnx_command_passes_its_options_through(models, tmp_path, capsys):
    """``amnet-export onnx`` with the non-default options: the highest opset TensorRT 10 parses
    and the raw weights of a checkpoint that has EMA weights. The export is checked (parity,
    TensorRT operators) like the default one."""
    out = tmp_path / "raw20.onnx"
    argv = ["onnx", "--ckpt", str(models["pt"]), "--out", str(out), "--opset", "20", "--no-ema"]
    assert export_main(argv) == 0
    printed = capsys.readouterr().out
    assert "parity" in printed and "TensorRT 10 compatibility: ok" in printed
    meta = read_onnx_metadata(out)
    assert meta["num_classes"] == 5 and meta["opset"] == 20 and meta["weights"] == "model"
    model = onnx.load(str(out))
    assert {o.domain: o.version for o in model.opset_import}.get("") == 20


def test_export_command_errors_are_one_line(tmp_path, capsys):
    assert export_main(["coreml"]) == 2
    assert export_main([]) == 2
    assert export_main(["onnx", "--ckpt", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("amnet-export onnx: error:") and "missing.pt" in err[-1]
    assert not list(tmp_path.iterdir())
