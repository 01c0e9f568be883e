"""scripts/ablate.py produces the seed's table for the ablation configs it is given."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ablation_table_has_the_seeds_columns(tmp_path):
    data = tmp_path / "data"
    synth = "from amnet.cli.synth import main; raise SystemExit(main())"
    subprocess.run(
        [
            sys.executable,
            "-c",
            synth,
            "--out",
            str(data),
            "--preset",
            "tiny",
            "--videos",
            "3",
            "--quiet",
        ],
        check=True,
    )
    table = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "ablate.py"), "--data", str(data), "--configs", "dim_128,layers1_heads2",
         "--epochs", "1", "--max-seq-len", "128", "--device", "cpu", "--work", str(tmp_path / "runs"), "--out", str(table)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
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
