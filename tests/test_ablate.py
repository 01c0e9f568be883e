"""scripts/ablate.py produces the seed's table for the ablation configs it is given."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ablate_main():
    """scripts/ablate.py's ``main(argv)``, loaded from the file (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("ablate", ROOT / "scripts" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_ablation_table_has_the_seeds_columns(tmp_path, monkeypatch):
    from amnet.cli.synth import main as synth_main

    data = tmp_path / "data"
    assert synth_main(["--out", str(data), "--preset", "tiny", "--videos", "3", "--quiet"]) == 0
    table = tmp_path / "table.md"
    monkeypatch.chdir(ROOT)  # the script's own default paths are relative to the repository
    code = _ablate_main()(["--data", str(data), "--configs", "dim_128,layers1_heads2", "--epochs", "1",
                           "--max-seq-len", "128", "--device", "cpu", "--work", str(tmp_path / "runs"),
                           "--out", str(table)])  # fmt: skip
    assert code == 0
    lines = table.read_text().splitlines()
    assert (
        "| config | mAP@0.5 | mAP@0.7 | avg | avg (raw weights) | train | inference (test set) |"
        in lines
    )
    assert any("lr" not in line and "overrides: none" in line for line in lines)
    rows = [
        line
        for line in lines
        if line.startswith("| D=128") or line.startswith("| 1 layer, 2 heads")
    ]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert (
            0.0 <= float(cells[1]) <= 100.0 and cells[5].endswith("s") and cells[6].endswith(" s")
        )


def test_unknown_ablation_is_refused(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ablate.py"), "--data", str(tmp_path), "--configs", "dim_99"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert (
        proc.returncode == 2
        and "unknown ablation" in proc.stderr
        and "Traceback" not in proc.stderr
    )
