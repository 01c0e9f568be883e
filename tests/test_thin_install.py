"""``pip install amnet`` with no extras is the thin runtime: numpy + ONNX Runtime, no torch.

A fresh virtual environment gets the package without extras; there ``amnet-infer`` runs an ONNX
model on a feature file, ``amnet-eval`` scores a results file, and a command that needs an extra
says which one in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest

from amnet.synth import preset_class_names

ROOT = Path(__file__).resolve().parents[1]
# One pytest worker runs this module (scripts/test.sh runs -n auto), so that
# its virtual environment is built once.
pytestmark = pytest.mark.xdist_group("test_thin_install")
BACKEND_WARNING = re.compile(r"[A-Za-z]+Warning\b|^\s*!!\s*$", re.MULTILINE)


def copy_project(dest: Path) -> None:
    """The project's sources without the checkout's build state, venv and tests: builds run in
    a copy, since pip builds in the source tree and would leave build/ in the checkout."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "work", "build", "*.egg-info", "__pycache__", ".pytest_cache", "tests"))  # fmt: skip


@pytest.fixture(scope="module")
def thin_env(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("thin")
    source = base / "src"
    copy_project(source)
    env_dir = base / "venv"
    # No pip inside (ensurepip costs seconds): this interpreter's pip installs into it.
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0 and "Could not find a version" in proc.stderr:
        pytest.skip(f"package index unreachable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The project's own packaging builds without warnings: pip relays the build backend's as
    # "...Warning" classes in a "!!" banner (pip's own "WARNING:" lines are about the machine).
    assert not BACKEND_WARNING.search(proc.stderr), proc.stderr[-3000:]
    return env_dir / "bin"


def test_an_editable_build_prints_nothing(tmp_path):
    """``pip install -e .`` (the set-up script's install) builds through setuptools'
    ``build_editable``; with the src layout it is a plain ``.pth`` entry and no notice."""
    source = tmp_path / "copy"
    copy_project(source)
    build = "import sys, setuptools.build_meta as b; print(b.build_editable(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "wheel")],
        cwd=source, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not BACKEND_WARNING.search(proc.stderr), proc.stderr[-3000:]
    assert "Editable installation" not in proc.stderr, proc.stderr[-3000:]
    wheel = tmp_path / "wheel" / proc.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        pth = [n for n in archive.namelist() if n.endswith(".pth")]
        assert len(pth) == 1 and archive.read(pth[0]).decode().strip().endswith("src")


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, env=env,
        timeout=300,
    )  # fmt: skip


def test_thin_install_has_no_torch(thin_env, tmp_path):
    proc = run(thin_env, "python", "-c", "import torch", cwd=tmp_path)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
    proc = run(thin_env, "python", "-c", "import onnxruntime, numpy, amnet.deploy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_thin_install_runs_infer_and_eval(thin_env, tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    feats = tmp_path / "video_a.npy"
    np.save(feats, np.abs(rng.normal(0, 0.3, (200, 2048))).astype(np.float32))
    out = tmp_path / "results.json"
    proc = run(thin_env, "amnet-infer", "--engine", str(tiny_model["onnx"]), str(feats),
               "--output", str(out), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["video_a"] and results["video_a"]
    # Score that file against ground truth laid out with the same classes.
    actions = [{"label": name, "segment": [2.0 + 4 * i, 5.0 + 4 * i], "label_id": i}
               for i, name in enumerate(preset_class_names("tiny"))]  # fmt: skip
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": {"video_a": {
        "subset": "test", "duration": 27.0, "fps": 30.0, "annotations": actions}}}))  # fmt: skip
    proc = run(thin_env, "amnet-eval", "--gt", str(gt), "--subset", "test", "--pred", str(out),
               "--json", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert 0.0 <= json.loads(proc.stdout.strip().splitlines()[-1])["average_mAP"] <= 1.0
    # What a deployed model is, without torch: its contract and the checkpoint it came from.
    proc = run(thin_env, "amnet-infer", "--engine", str(tiny_model["onnx"]), "--describe",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    described = json.loads(proc.stdout)
    assert described["class_names"] == preset_class_names("tiny")
    assert (
        described["checkpoint_sha256"] == hashlib.sha256(tiny_model["pt"].read_bytes()).hexdigest()
    )


def test_commands_that_need_an_extra_say_which(thin_env, tiny_model, tmp_path):
    proc = run(thin_env, "amnet-train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"),
               "--data", str(tmp_path), "--out", str(tmp_path / "run"), cwd=tmp_path)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "amnet[train]" in lines[0] and "Traceback" not in proc.stderr
    feats = tmp_path / "video.npy"
    np.save(feats, np.zeros((50, 2048), np.float32))
    proc = run(thin_env, "amnet-infer", "--engine", str(tiny_model["pt"]), str(feats),
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "amnet[train]" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


if sys.platform == "win32":  # pragma: no cover - venv layout differs
    pytestmark = pytest.mark.skip("POSIX venv layout")
