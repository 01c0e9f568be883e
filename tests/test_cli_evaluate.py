"""``amnet-eval`` file mode, run as a separate process the way users run it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import run_main


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return run_main("amnet.cli.evaluate", *args)


def annotation_file(path: Path) -> Path:
    database = {
        # Test: "Jump" has two events, "Run" one (plus a duplicate the metric drops).
        "t1": {
            "subset": "Test",
            "duration": 60.0,
            "fps": 30.0,
            "annotations": [
                {"label": "Jump", "segment": [0.0, 10.0], "label_id": 0},
                {"label": "Jump", "segment": [20.0, 30.0], "label_id": 0},
            ],
        },
        "t2": {
            "subset": "Test",
            "duration": 60.0,
            "fps": 30.0,
            "annotations": [
                {"label": "Run", "segment": [5.0, 15.0], "label_id": 1},
                {"label": "Run", "segment": [5.0, 15.0004], "label_id": 1},
            ],
        },
        # "Swim" only occurs in training videos: it is a class, but not evaluated on Test.
        "v1": {
            "subset": "Validation",
            "duration": 60.0,
            "fps": 30.0,
            "annotations": [{"label": "Swim", "segment": [1.0, 2.0], "label_id": 2}],
        },
    }
    path.write_text(json.dumps({"version": "x", "database": database}))
    return path


def results_file(path: Path, results: dict) -> Path:
    path.write_text(json.dumps({"version": "x", "results": results, "external_data": {}}))
    return path


# Jump (tIoU 0.5 and 0.85), as in the hand-worked metric test: TP, FP, TP -> AP 5/6 at 0.5;
# only the first TP at 0.85 -> AP 1/2. Run: one exact hit -> AP 1 at both.
# mAP = (5/6 + 1) / 2 = 11/12 at 0.5 and (1/2 + 1) / 2 = 3/4 at 0.85.
RESULTS = {
    "t1": [
        {"label": "Jump", "label_id": 0, "score": 0.9, "segment": [0.0, 10.0]},
        {"label": "Jump", "label_id": 0, "score": 0.8, "segment": [1.0, 10.0]},
        {"label": "Jump", "score": 0.7, "segment": [20.0, 28.0]},
    ],
    "t2": [{"label": "Run", "label_id": 1, "score": 0.6, "segment": [5.0, 15.0]}],
}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return annotation_file(tmp_path / "gt.json"), results_file(tmp_path / "pred.json", RESULTS)


def test_table_output(files: tuple[Path, Path]) -> None:
    gt, pred = files
    proc = run_eval("--gt", str(gt), "--subset", "test", "--pred", str(pred), "--tiou", "0.5,0.85")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "91.67" in out and "75.00" in out  # 11/12 and 3/4
    assert "83.33" in out  # the average
    assert "{" not in out  # no JSON without --json
    assert proc.stderr == ""


def test_json_is_the_last_line(files: tuple[Path, Path]) -> None:
    gt, pred = files
    proc = run_eval(
        "--gt", str(gt), "--subset", "Test", "--pred", str(pred), "--tiou", "0.5,0.85", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(obj) == {"tiou_thresholds", "mAP", "average_mAP", "per_class_AP"}
    assert obj["tiou_thresholds"] == [0.5, 0.85]
    assert obj["mAP"] == pytest.approx([11 / 12, 3 / 4])
    assert obj["average_mAP"] == pytest.approx((11 / 12 + 3 / 4) / 2)
    assert obj["per_class_AP"] == {
        "Jump": pytest.approx([5 / 6, 1 / 2]),
        "Run": pytest.approx([1.0, 1.0]),
    }


@pytest.mark.parametrize(
    ("results", "warning", "average"),
    [
        # Another subset's results (or ids with another prefix): the score is 0, and says why.
        ({"v1": [{"label": "Swim", "score": 0.9, "segment": [1.0, 2.0]}]},
         "the results hold none of the 2 ground-truth videos, so every AP is 0", 0.0),
        ({}, "the results hold none of the 2 ground-truth videos", 0.0),
        # Part of the subset: the rest count as videos without detections, and are named.
        ({"t2": RESULTS["t2"]}, "1 of the 2 ground-truth videos are not in the results", 0.5),
        # A video listed without detections is in the results.
        ({**RESULTS, "t1": []}, None, 0.5),
        # Videos the ground truth does not have: false positives (last here, so no AP moves).
        ({**RESULTS, "x9": [{"label": "Jump", "score": 0.1, "segment": [0.0, 10.0]}]},
         "1 predicted videos are not in the ground truth", 11 / 12),
    ],
    ids=["another subset", "empty", "part of the subset", "a video without detections",
         "videos beyond the ground truth"],
)  # fmt: skip
def test_results_that_miss_ground_truth_videos_say_so(tmp_path, caplog, results, warning, average):
    gt = annotation_file(tmp_path / "gt.json")
    pred = results_file(tmp_path / "pred.json", results)
    proc = run_eval("--gt", str(gt), "--subset", "test", "--pred", str(pred), "--tiou", "0.5",
                    "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["average_mAP"] == pytest.approx(average)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert [warning in line for line in said] == ([True] if warning else []), said


def test_default_thresholds(files: tuple[Path, Path]) -> None:
    gt, pred = files
    proc = run_eval("--gt", str(gt), "--subset", "test", "--pred", str(pred), "--json")
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout.strip().splitlines()[-1])
    assert obj["tiou_thresholds"] == [0.3, 0.4, 0.5, 0.6, 0.7]


def test_file_mode_does_not_import_torch(files: tuple[Path, Path]) -> None:
    gt, pred = files
    code = (
        "import sys\n"
        "from amnet.cli.evaluate import main\n"
        f"rc = main(['--gt', {str(gt)!r}, '--subset', 'test', '--pred', {str(pred)!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('NO_TORCH_OK')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "NO_TORCH_OK" in proc.stdout


def check_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("amnet-eval: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_gt_or_pred(files: tuple[Path, Path]) -> None:
    gt, pred = files
    check_user_error(run_eval("--pred", str(pred), "--subset", "test"), "--gt")
    check_user_error(run_eval("--gt", str(gt), "--subset", "test"), "--pred")
    check_user_error(run_eval("--gt", str(gt), "--pred", str(pred)), "--subset")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        # Model-mode options: file mode scores --pred and would leave them unused.
        (["--out", "OUT"], "--out is for model mode"),
        (["--data", "DIR"], "--data is for model mode"),
        (["--device", "cpu"], "--device is for model mode"),
        (["--no-ema"], "--ema/--no-ema is for model mode"),
        # Options of a feature that is not asked for.
        (["--class-topk", "3"], "--class-topk goes with --class-scores"),
        (["--operating-tiou", "0.3"], "--operating-tiou goes with --operating-points"),
    ],
)
def test_options_of_another_mode_are_refused(
    files: tuple[Path, Path], tmp_path: Path, extra: list[str], fragment: str
) -> None:
    gt, pred = files
    extra = [str(tmp_path / "out.json") if a == "OUT" else str(tmp_path) if a == "DIR" else a
             for a in extra]  # fmt: skip
    proc = run_eval("--gt", str(gt), "--subset", "test", "--pred", str(pred), *extra)
    check_user_error(proc, fragment)
    assert proc.stdout == "" and sorted(tmp_path.iterdir()) == sorted(files)


def test_empty_subset(files: tuple[Path, Path]) -> None:
    gt, pred = files
    check_user_error(
        run_eval("--gt", str(gt), "--subset", "training", "--pred", str(pred)), "no videos"
    )


def test_unknown_label_in_results(files: tuple[Path, Path], tmp_path: Path) -> None:
    gt, _ = files
    bad = dict(RESULTS, t2=[{"label": "Fly", "score": 0.6, "segment": [5.0, 15.0]}])
    pred = results_file(tmp_path / "bad.json", bad)
    check_user_error(
        run_eval("--gt", str(gt), "--subset", "test", "--pred", str(pred)), "'Fly'", str(pred)
    )


@pytest.mark.parametrize(
    ("which", "text", "fragment"),
    [
        ("pred", '{"results": {', "malformed results file"),
        ("pred", '{"version": 1}', "no 'results'"),
        (
            "pred",
            '{"results": {"t1": [{"label": "Jump", "score": 1, "segment": [3, 1]}]}}',
            "negative-length",
        ),
        ("gt", "not json", "malformed annotation file"),
        ("gt", '{"videos": {}}', "no 'database'"),
        (
            "gt",
            '{"database": {"a": {"subset": "test", "duration": 9, '
            '"annotations": [{"label": "x", "segment": [5, 1]}]}}}',
            "negative-length",
        ),
        (
            "gt",
            '{"database": {"a": {"subset": "test", "duration": 9, "annotations": []}, '
            '"b": {"subset": "val", "duration": 9, '
            '"annotations": [{"label": "Jump", "segment": [1, 2]}, '
            '{"label": "Run", "segment": [1, 2]}]}}}',
            "no (non-empty) events",
        ),
    ],
)
def test_malformed_files(
    files: tuple[Path, Path], tmp_path: Path, which: str, text: str, fragment: str
) -> None:
    gt, pred = files
    bad = tmp_path / f"bad_{which}.json"
    bad.write_text(text)
    if which == "gt":
        gt = bad
    else:
        pred = bad
    check_user_error(
        run_eval("--gt", str(gt), "--subset", "test", "--pred", str(pred)), fragment, str(bad)
    )


def test_missing_file_and_bad_tiou(files: tuple[Path, Path], tmp_path: Path) -> None:
    gt, pred = files
    missing = tmp_path / "nope.json"
    check_user_error(
        run_eval("--gt", str(gt), "--subset", "test", "--pred", str(missing)), "not found"
    )
    check_user_error(
        run_eval("--gt", str(gt), "--subset", "test", "--pred", str(pred), "--tiou", "0.3:0.1:0.7"),
        "did you mean",
    )
