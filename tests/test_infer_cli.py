"""``amnet-infer`` as users run it, on real files, good and bad: the installed command in a
process of its own where that matters (a plain run, a terminal), ``main(argv)`` in-process for
the rest."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clitools import run_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"
DIM = 2048
MAX_ERROR_LINES = 12  # "a few lines": the error line plus at most _MAX_LISTED files and a count


def infer_command() -> list[str]:
    script = shutil.which("amnet-infer", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "amnet.deploy.infer_cli"]


def run_infer_process(*args: str) -> subprocess.CompletedProcess:
    """The installed command in a process of its own, exactly as a user runs it."""
    return subprocess.run(
        [*infer_command(), *args], capture_output=True, text=True, timeout=180, check=False
    )


def run_infer(*args: str) -> subprocess.CompletedProcess:
    """``main(argv)`` in this process: the same exit status, stdout and stderr, without paying
    for a fresh interpreter per call."""
    return run_main("amnet.deploy.infer_cli", *args)


@pytest.fixture(scope="session")
def model(tiny_model) -> dict[str, Path]:
    return tiny_model


def feats(length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(0.0, 0.3, (length, DIM))).astype(np.float32)


@pytest.fixture
def good_dir(tmp_path) -> Path:
    folder = tmp_path / "feats"
    folder.mkdir()
    for i, length in enumerate((60, 256, 300)):
        np.save(folder / f"video_{i}.npy", feats(length, i))
    (folder / "notes.txt").write_text("not a feature file, ignored in a folder")
    # What a copy from macOS leaves: AppleDouble files, not arrays; hidden, so left out.
    (folder / "._video_0.npy").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    np.save(folder / ".cache.npy", feats(10))
    return folder


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= MAX_ERROR_LINES, proc.stderr
    assert lines[0].startswith("amnet-infer: ")
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


# -- success ---------------------------------------------------------------------------------


def test_folder_to_activitynet_json(model, good_dir):
    from amnet.deploy import Detector

    proc = run_infer_process("--engine", str(model["onnx"]), str(good_dir), "--quiet")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {"version", "results", "external_data"}
    assert list(data["results"]) == ["video_0", "video_1", "video_2"]
    det = Detector(model["onnx"])
    expected = det(np.load(good_dir / "video_1.npy"))
    got = data["results"]["video_1"]
    assert len(got) == len(expected)
    for entry, d in zip(got, expected, strict=True):
        assert entry["label"] == d.label and entry["label_id"] == d.label_id
        assert entry["score"] == pytest.approx(d.score, abs=1e-6)
        assert entry["segment"] == pytest.approx([d.start, d.end], abs=1e-5)


def test_output_formats_round_trip(model, good_dir, tmp_path):
    from amnet.results import read_results
    from amnet.synth import preset_class_names

    files = [str(good_dir / "video_0.npy"), str(good_dir / "video_2.npy")]
    common = ["--engine", str(model["onnx"]), *files, "--top-k", "7", "--min-score", "0.001"]
    out = {}
    for fmt in ("activitynet", "jsonl", "csv"):
        out[fmt] = tmp_path / f"out.{fmt}"
        proc = run_infer(*common, "--format", fmt, "--output", str(out[fmt]))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == ""
        assert "Traceback" not in proc.stderr
    anet = read_results(out["activitynet"], preset_class_names("tiny"))
    assert list(anet) == ["video_0", "video_2"]
    assert all(0 < len(d) <= 7 for d in anet.values())
    lines = [json.loads(line) for line in out["jsonl"].read_text().splitlines()]
    assert [line["video_id"] for line in lines] == ["video_0", "video_2"]
    assert lines[0]["duration"] == pytest.approx((59 * 4 + 16) / 30)
    for line in lines:
        dets = anet[line["video_id"]]
        assert [e["score"] for e in line["detections"]] == dets.scores.tolist()
        assert all(0 <= e["segment"][0] <= e["segment"][1] <= line["duration"] for e in line["detections"])  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out["csv"].read_text())))
    assert list(rows[0]) == ["video_id", "start", "end", "label", "label_id", "score"]
    assert len(rows) == sum(len(d) for d in anet.values())
    first = anet["video_0"]
    assert float(rows[0]["score"]) == first.scores[0]
    assert [float(rows[0]["start"]), float(rows[0]["end"])] == first.segments[0].tolist()


def test_overrides_and_pt_engine(model, good_dir):
    path = str(good_dir / "video_0.npy")
    a = json.loads(run_infer("--engine", str(model["onnx"]), path, "-q").stdout)
    b = json.loads(run_infer("--engine", str(model["onnx"]), path, "-q", "--fps", "15").stdout)
    seg_a = a["results"]["video_0"][0]["segment"]
    seg_b = b["results"]["video_0"][0]["segment"]
    assert seg_b == pytest.approx([2 * x for x in seg_a], rel=1e-6)
    pt = run_infer("--engine", str(model["pt"]), path, "-q", "--format", "jsonl")
    assert pt.returncode == 0, pt.stderr
    assert json.loads(pt.stdout)["video_id"] == "video_0"


def test_packed_calls_and_a_post_processing_pool_give_the_same_results(model, good_dir):
    """``--batch-size`` packs windows of consecutive videos into shared backend calls and
    ``--postprocess-workers`` post-processes in other processes: the output stays the same
    (video_2 runs in two windows, shared with its neighbours)."""
    args = ["--engine", str(model["onnx"]), str(good_dir), "-q", "--format", "jsonl"]
    plain = run_infer(*args)
    packed = run_infer(*args, "--batch-size", "3", "--postprocess-workers", "2")
    assert plain.returncode == 0 and packed.returncode == 0, packed.stderr
    for a, b in zip(plain.stdout.splitlines(), packed.stdout.splitlines(), strict=True):
        a, b = json.loads(a), json.loads(b)
        assert a["video_id"] == b["video_id"] and a["duration"] == b["duration"]
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        for x, y in zip(a["detections"], b["detections"], strict=True):
            assert y["score"] == pytest.approx(x["score"], abs=1e-5)
            assert y["segment"] == pytest.approx(x["segment"], abs=1e-4)
    for flag in ("--batch-size", "--postprocess-workers"):
        assert_clean_failure(run_infer(*args, flag, "0"), f"{flag} must be >= 1")


def run_on_terminal(*args: str) -> tuple[int, str]:
    """Run amnet-infer with stderr on a pseudo-terminal, as in an interactive shell."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # A new pseudo-terminal is 0 columns wide, which tqdm renders as nothing: give it 24 x 100.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([*infer_command(), *args], stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=180), b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_only(model, good_dir):
    code, terminal = run_on_terminal("--engine", str(model["onnx"]), str(good_dir))
    assert code == 0 and "amnet-infer" in terminal and "video" in terminal
    # Off a terminal (a pipe, a log file) the default is quiet: no bar, no INFO lines.
    piped = run_infer("--engine", str(model["onnx"]), str(good_dir))
    assert piped.returncode == 0 and piped.stderr == ""
    code, terminal = run_on_terminal("--engine", str(model["onnx"]), str(good_dir), "--quiet")
    assert code == 0 and terminal == ""


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 400 <= width <= 4000 and 150 <= height <= 4000, (path, width, height)


def test_plot(model, good_dir, tmp_path):
    plots = tmp_path / "plots"
    proc = run_infer("--engine", str(model["onnx"]), str(good_dir), "-q", "--plot", str(plots))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in plots.iterdir()) == [f"video_{i}.png" for i in range(3)]
    for png in plots.iterdir():
        assert_png(png)
    pt_plots = tmp_path / "pt_plots"
    proc = run_infer(
        "--engine", str(model["pt"]), str(good_dir / "video_2.npy"), "-q", "--plot", str(pt_plots)
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in pt_plots.iterdir()) == ["video_2.png", "video_2_ame.png"]
    assert_png(pt_plots / "video_2_ame.png")


def test_describe_names_what_runs_and_the_checkpoint_it_came_from(model, tmp_path):
    """``--describe``: the model opened as a run opens it, as JSON. The ONNX export and the
    checkpoint it came from describe the same contract, and the export names that checkpoint
    by its SHA-256: a deployed file can be traced to its training run."""
    from amnet.deploy import Detector

    described = {}
    for kind in ("onnx", "pt"):
        proc = run_infer("--engine", str(model[kind]), "--describe")
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        described[kind] = json.loads(proc.stdout)
    onnx, pt = described["onnx"], described["pt"]
    assert onnx == Detector(model["onnx"]).describe()
    contract = ("class_names", "num_classes", "input_dim", "fps", "feature_stride", "num_frames",
                "max_seq_len", "force_upsampling", "chunk_overlap", "max_detections", "weights")  # fmt: skip
    assert {k: onnx[k] for k in contract} == {k: pt[k] for k in contract}
    assert onnx["checkpoint_sha256"] == pt["checkpoint_sha256"]
    assert pt["checkpoint_sha256"] == hashlib.sha256(model["pt"].read_bytes()).hexdigest()
    assert (onnx["backend"], onnx["precision"], onnx["quantization"]) == ("onnxruntime", "fp32", None)  # fmt: skip
    # The session's initialised checkpoint has no EMA weights: the raw ones run, and say so.
    assert (pt["backend"], pt["exported_with"], pt["weights"]) == ("torch", None, "model")
    # The options a run would take show in it; --output writes the same JSON, atomically.
    out = tmp_path / "model.json"
    proc = run_infer("--engine", str(model["onnx"]), "--describe", "--top-k", "7",
                     "--min-score", "0.2", "--fps", "25", "-o", str(out))  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    got = json.loads(out.read_text())
    assert (got["max_detections"], got["min_score"], got["fps"]) == (7, 0.2, 25.0)
    assert {k: got[k] for k in ("class_names", "checkpoint_sha256")} == {
        k: onnx[k] for k in ("class_names", "checkpoint_sha256")
    }


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["FEATURES"], "give no FEATURES"),  # inputs of a run
        (["--stream", "--dim", "2048"], "give no FEATURES, --stream"),
        (["--workers", "2"], "--workers"),
        (["--plot", "PLOTS"], "--plot does not apply"),  # outputs and options of a run
        (["--format", "csv"], "--format and --skip-bad"),
        (["--class-thresholds", "OPS.json"], "--class-thresholds does not apply"),
        (["-o", "MODEL"], "refusing to overwrite"),  # the model itself
        (["--runtime", "tensorrt"], "invalid choice"),  # a runtime that cannot open it
    ],
)
def test_describe_refuses_what_does_not_apply(model, tmp_path, good_dir, extra, needle):
    names = {"FEATURES": str(good_dir), "PLOTS": str(tmp_path / "plots"),
             "OPS.json": str(tmp_path / "ops.json"), "MODEL": str(model["onnx"])}  # fmt: skip
    before = model["onnx"].read_bytes()
    proc = run_infer(
        "--engine", str(model["onnx"]), "--describe", *(names.get(a, a) for a in extra)
    )
    assert_clean_failure(proc, needle)
    assert proc.stdout == "" and sorted(tmp_path.iterdir()) == [good_dir]
    assert model["onnx"].read_bytes() == before


# -- bad input -------------------------------------------------------------------------------


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected words in the message)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str]] = {}

    def add(name: str, message: str) -> Path:
        path = folder / name
        cases[name] = (path, message)
        return path

    add("missing.npy", "not found")
    add("empty.npy", "empty file").write_bytes(b"")
    good = io.BytesIO()
    np.save(good, feats(50))
    add("truncated.npy", "not a valid .npy").write_bytes(good.getvalue()[:1000])
    add("text.npy", "not a .npy file").write_text("video,start,end\n")
    np.savez(folder / "archive.npz", x=feats(5))
    (folder / "archive.npz").rename(add("archive.npy", ".npz archive"))
    # A hostile input: an object array, which np.save can only write as a pickle.
    hostile = {"allow_pickle": True}
    np.save(add("pickled.npy", "pickled"), np.array([{"a": 1}], dtype=object), **hostile)
    np.save(add("rank1.npy", "shape [T, C]"), np.zeros(DIM, np.float32))
    np.save(add("rank3.npy", "shape [T, C]"), np.zeros((2, 3, DIM), np.float32))
    np.save(add("channels.npy", "1024 channels"), np.zeros((10, 1024), np.float32))
    nan = feats(20)
    nan[3, 7] = np.nan
    np.save(add("nan.npy", "NaN or Inf"), nan)
    inf = feats(20).astype(np.float64)
    inf[0, 0] = np.inf
    np.save(add("inf.npy", "NaN or Inf"), inf)
    np.save(add("strings.npy", "dtype <U"), np.full((4, DIM), "x"))
    np.save(add("complex.npy", "dtype complex"), np.zeros((4, DIM), np.complex64))
    np.save(add("bools.npy", "dtype bool"), np.zeros((4, DIM), bool))
    return cases


def test_every_bad_feature_file(model, tmp_path):
    out = tmp_path / "out.json"
    for name, (path, message) in _bad_files(tmp_path / "bad").items():
        proc = run_infer("--engine", str(model["onnx"]), str(path), "--output", str(out))
        assert_clean_failure(proc, name, message)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists(), name
        assert proc.stdout == ""
    # A file that is bad in itself is reported before the model is opened: at once, and even
    # when the model could not be opened.
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    path, message = _bad_files(tmp_path / "again")["nan.npy"]
    proc = run_infer("--engine", str(broken), str(path), "--output", str(out))
    assert_clean_failure(proc, message)


def test_bad_models_and_folders(model, tmp_path, good_dir):
    out = tmp_path / "out.json"
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x01garbage")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model["onnx"].read_bytes()[:5000])
    bad_pt = tmp_path / "bad.pt"
    bad_pt.write_text("not a checkpoint")
    unknown = tmp_path / "model.h5"
    unknown.write_bytes(b"x")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    video = str(good_dir / "video_0.npy")
    cases = [
        (["--engine", str(tmp_path / "nope.onnx"), video], "model file not found"),
        (["--engine", str(garbage), video], "cannot load"),
        (["--engine", str(truncated), video], "cannot load"),
        (["--engine", str(bad_pt), video], "checkpoint"),
        (["--engine", str(unknown), video], "unknown model type"),
        (["--engine", str(model["onnx"]), str(empty_dir)], "no .npy feature files"),
        (["--engine", str(model["onnx"]), str(tmp_path / "no_such_dir")], "no such file"),
        (["--engine", str(model["onnx"]), video, "--device", "cuda"], "CUDA"),
        (["--engine", str(model["onnx"]), video, "--top-k", "0"], "--top-k"),
        (["--engine", str(model["onnx"]), video, "--format", "xml"], "invalid choice"),
        (["--engine", str(model["onnx"]), video, video], "given twice"),
        ([video], "--engine"),
    ]
    for args, message in cases:
        proc = run_infer(*args, "--output", str(out))
        assert_clean_failure(proc, message)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists(), args


def test_partially_bad_batch(model, good_dir, tmp_path):
    from amnet.results import read_results
    from amnet.synth import preset_class_names

    bad = _bad_files(tmp_path / "bad")
    np.save(good_dir / "zz_nan.npy", np.full((5, DIM), np.nan, np.float32))
    inputs = [str(good_dir), str(bad["empty.npy"][0]), str(bad["channels.npy"][0])]
    out = tmp_path / "out.json"

    strict = run_infer("--engine", str(model["onnx"]), *inputs, "--output", str(out), "-q")
    assert_clean_failure(strict, "3 of 6", "zz_nan.npy", "empty.npy", "channels.npy", "--skip-bad")
    assert not out.exists()

    lenient = run_infer(
        "--engine", str(model["onnx"]), *inputs, "--output", str(out), "-q", "--skip-bad"
    )
    assert_clean_failure(lenient, "skipped 3 of 6", "zz_nan.npy", "empty.npy", code=3)
    results = read_results(out, preset_class_names("tiny"))
    assert list(results) == ["video_0", "video_1", "video_2"]

    out.unlink()
    all_bad = run_infer(
        "--engine", str(model["onnx"]), str(bad["nan.npy"][0]), str(bad["empty.npy"][0]),
        "--output", str(out), "--skip-bad",
    )  # fmt: skip
    assert_clean_failure(all_bad, "none of the 2")
    assert not out.exists()


def test_many_bad_files_are_summarised(model, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(20):
        np.save(folder / f"v{i:02d}.npy", np.zeros((4, 7), np.float32))
    proc = run_infer("--engine", str(model["onnx"]), str(folder))
    assert_clean_failure(proc, "20 of 20", "and 12 more")


def test_help_documents_the_policy():
    proc = run_infer("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--skip-bad" in text and "exit status is 3" in text and "exit 2" in text


def test_onnx_run_imports_neither_torch_nor_matplotlib_nor_ray(model, good_dir, tmp_path):
    code = (
        "import sys\n"
        "from amnet.deploy.infer_cli import main\n"
        f"rc = main(['--engine', {str(model['onnx'])!r}, {str(good_dir)!r}, '-q', "
        f"'-o', {str(tmp_path / 'out.json')!r}])\n"
        "print(rc, sorted(m for m in ('torch', 'matplotlib', 'onnx', 'ray') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.stdout.strip() == "0 []", proc.stderr
