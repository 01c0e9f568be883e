"""``amnet-export onnx|tensorrt``: the export tools as one console command, and the scripts
still run from any directory."""

import subprocess
import sys
from pathlib import Path

from amnet.cli.export import main as export_main
from amnet.metadata import read_onnx_metadata

ROOT = Path(__file__).resolve().parents[1]


def test_export_onnx_command_writes_a_checked_model(tiny_model, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert export_main(["onnx", "--ckpt", str(tiny_model["pt"]), "--out", str(out)]) == 0
    assert read_onnx_metadata(out)["num_classes"] == 5
    assert "parity" in capsys.readouterr().out


def test_export_command_errors_are_one_line(tiny_model, tmp_path, capsys):
    assert export_main(["coreml"]) == 2
    assert export_main([]) == 2
    assert export_main(["onnx", "--ckpt", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("amnet-export onnx: error:") and "missing.pt" in err[-1]
    assert not list(tmp_path.iterdir())


def test_export_script_runs_from_any_directory(tiny_model, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "export" / "to_onnx.py"), "--ckpt", str(tiny_model["pt"]),
         "--out", "here.onnx"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "here.onnx").is_file()
