"""The prior-only baseline: its statistics, its proposals, its (low) score and its CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from clitools import run_main

from amnet import synth
from amnet.annotations import VideoAnnotation, dump_database, load_annotations, select_subset
from amnet.baseline import PriorBaseline, run_baseline
from amnet.cli.baseline import main as baseline_main
from amnet.errors import AMNetError
from amnet.fileio import atomic_write_json
from amnet.metrics import evaluate_detection
from amnet.results import read_results

TIOU = [0.3, 0.4, 0.5, 0.6, 0.7]


def _video(vid: str, subset: str, duration: float, actions: list[tuple[str, float, float]]):
    names = ["A", "B", "C"]
    return VideoAnnotation(
        video_id=vid,
        subset=subset,
        duration=duration,
        fps=30.0,
        segments=np.array([[s, e] for _, s, e in actions]).reshape(-1, 2),
        labels=[label for label, _, _ in actions],
        label_ids=np.array([names.index(label) for label, _, _ in actions], dtype=np.int64),
    )


def test_fit_takes_median_length_and_class_frequencies() -> None:
    train = [
        _video("t1", "validation", 30.0, [("A", 0.0, 1.0), ("A", 5.0, 7.0), ("B", 10.0, 13.0)]),
        _video("t2", "validation", 30.0, [("A", 2.0, 6.0)]),
    ]
    prior = PriorBaseline.fit(train, ["A", "B", "C"])
    assert prior.length == pytest.approx(2.5)  # median of 1, 2, 3, 4
    assert prior.class_ids.tolist() == [0, 1]  # C never occurs: never predicted
    assert prior.frequencies.tolist() == pytest.approx([0.75, 0.25])


def test_predict_tiles_the_video_with_every_class() -> None:
    prior = PriorBaseline(length=2.5, class_ids=np.array([0, 2]), frequencies=np.array([0.2, 0.8]))
    det = prior.predict(26.0)
    tiles = round(26.0 / 2.5)
    assert len(det) == 2 * tiles
    assert det.labels.tolist() == [2] * tiles + [0] * tiles  # most frequent class first
    assert det.scores.tolist() == [0.8] * tiles + [0.2] * tiles
    first = det.segments[:tiles]
    assert first[0, 0] == 0.0 and first[-1, 1] == pytest.approx(26.0)
    np.testing.assert_allclose(first[1:, 0], first[:-1, 1])  # contiguous, no gaps
    np.testing.assert_allclose(first[:, 1] - first[:, 0], 26.0 / tiles)
    assert len(prior.predict(0.0)) == 0


def test_fit_needs_actions() -> None:
    with pytest.raises(AMNetError, match="no actions"):
        PriorBaseline.fit([_video("t", "validation", 10.0, [])], ["A"])


def _write_layout(folder: Path, videos: list[VideoAnnotation]) -> Path:
    folder.mkdir(parents=True)
    atomic_write_json(folder / "annotations.json", dump_database(videos))
    return folder


@pytest.mark.parametrize("preset", ["tiny", "thumos14"])
def test_baseline_scores_low_through_the_cli(tmp_path: Path, preset: str) -> None:
    # The baseline reads annotations only, so the features are not written.
    data = _write_layout(tmp_path / "data", synth.draw_layout(preset, videos=30, seed=4))
    out = tmp_path / "results.json"
    argv = ["--data", str(data), "--subset", "test", "--out", str(out), "-q"]
    assert baseline_main(argv) == 0

    raw = json.loads(out.read_text())
    assert set(raw) == {"version", "results", "external_data"}
    entry = next(iter(raw["results"].values()))[0]
    assert set(entry) == {"label", "label_id", "score", "segment"}

    class_names = synth.preset_class_names(preset)
    predictions = read_results(out, class_names)
    ground_truth = select_subset(load_annotations(data / "annotations.json"), "test")
    assert set(predictions) == set(ground_truth)
    result = evaluate_detection(ground_truth, predictions, class_names, TIOU)
    assert 0.0 < result.average_mAP < 0.1


def test_run_baseline_uses_the_training_subset_only(tmp_path: Path) -> None:
    videos = [
        _video("a", "validation", 20.0, [("A", 1.0, 3.0)]),
        _video("b", "test", 20.0, [("B", 1.0, 9.0)]),
    ]
    data = _write_layout(tmp_path / "d", videos)
    detections, class_names, prior = run_baseline(data / "annotations.json", "test")
    assert class_names == ["A", "B"]
    assert prior.length == pytest.approx(2.0)
    assert list(detections) == ["b"]
    assert set(detections["b"].labels.tolist()) == {0}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_main("amnet.cli.baseline", *args)


@pytest.mark.parametrize("case", ["no-folder", "no-annotations", "empty-subset", "no-subset"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    data = tmp_path / "data"
    out = tmp_path / "results.json"
    if case != "no-folder":
        data.mkdir()
    if case in ("empty-subset", "no-subset"):
        _write_layout(tmp_path / "other", [_video("a", "validation", 10.0, [("A", 1.0, 2.0)])])
        data = tmp_path / "other"
    args = ["--data", str(data), "--out", str(out)]
    if case != "no-subset":
        args += ["--subset", "test"]
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amnet-baseline: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
