"""Results JSON: round trip, atomic writes and every kind of bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.results import read_results, results_to_json, write_results

CLASSES = ["Jump", "Run", "Swim"]


def sample() -> dict[str, Detections]:
    rng = np.random.default_rng(3)
    starts = rng.uniform(0, 100, 7)
    return {
        "video_b": Detections(
            np.stack([starts, starts + rng.uniform(0, 5, 7)], axis=1),
            rng.random(7),
            rng.integers(0, 3, 7),
        ),
        "video_a": Detections(np.array([[0.1, 0.1]]), np.array([1.0]), np.array([2])),
        "empty": Detections.empty(),
    }


def write_raw(path: Path, results: object, **extra: object) -> Path:
    path.write_text(json.dumps({"version": "x", "results": results, **extra}))
    return path


def test_round_trip_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    original = sample()
    write_results(path, original, CLASSES)
    back = read_results(path, CLASSES)
    assert list(back) == list(original)  # file order kept
    for vid, det in original.items():
        np.testing.assert_array_equal(back[vid].segments, det.segments)
        np.testing.assert_array_equal(back[vid].scores, det.scores)
        np.testing.assert_array_equal(back[vid].labels, det.labels)
    assert not [p for p in tmp_path.iterdir() if p.name != "results.json"]  # no temp file left


def test_json_layout() -> None:
    det = Detections(np.array([[1.5, 2.5]]), np.array([0.75]), np.array([1]))
    obj = results_to_json({"v": det}, CLASSES, version="test-1")
    assert obj == {
        "version": "test-1",
        "results": {"v": [{"label": "Run", "label_id": 1, "score": 0.75, "segment": [1.5, 2.5]}]},
        "external_data": {},
    }


def test_entries_without_label_id_are_accepted(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "r.json",
        {"v": [{"label": "Swim", "score": 0.5, "segment": [1, 2]}]},
    )
    det = read_results(path, CLASSES)["v"]
    assert det.labels.tolist() == [2]
    assert det.segments.tolist() == [[1.0, 2.0]]
    assert det.scores.tolist() == [0.5]


def test_label_id_may_name_a_repeated_class_name(tmp_path: Path) -> None:
    names = ["a", "class_1", "b", "class_1"]  # placeholders can repeat in a sparse label map
    path = write_raw(
        tmp_path / "r.json",
        {"v": [{"label": "class_1", "label_id": 3, "score": 0.5, "segment": [1, 2]}]},
    )
    assert read_results(path, names)["v"].labels.tolist() == [3]


def test_write_fails_cleanly_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_results(path, sample(), CLASSES)
    before = path.read_bytes()
    bad = {"v": Detections(np.array([[0.0, 1.0]]), np.array([math.nan]), np.array([0]))}
    with pytest.raises(AMNetError, match="non-finite"):
        write_results(path, bad, CLASSES)
    bad = {"v": Detections(np.array([[0.0, 1.0]]), np.array([0.5]), np.array([3]))}
    with pytest.raises(AMNetError, match="class id"):
        write_results(path, bad, CLASSES)
    # What read_results would refuse is not written either.
    bad = {"v": Detections(np.array([[2.0, 1.0]]), np.array([0.5]), np.array([0]))}
    with pytest.raises(AMNetError, match="ends before it starts"):
        write_results(path, bad, CLASSES)
    for vid in ("../v", "a/b", "", "x\n"):
        with pytest.raises(AMNetError, match="video id"):
            write_results(path, {vid: sample()["video_a"]}, CLASSES)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    with pytest.raises(AMNetError, match="does not exist"):
        write_results(tmp_path / "missing_dir" / "r.json", sample(), CLASSES)


GOOD = {"label": "Run", "label_id": 1, "score": 0.5, "segment": [1.0, 2.0]}


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ([], "'results' must be an object"),
        ({"v": {"label": "Run"}}, "must be a list"),
        ({"v": [GOOD, 3]}, "detection 1 is not an object"),
        ({"v": [{**GOOD, "label": "Fly"}]}, "label 'Fly' is not one of the 3 classes"),
        ({"v": [{k: v for k, v in GOOD.items() if k != "label"}]}, "no 'label'"),
        ({"v": [{**GOOD, "label": 1}]}, "no 'label'"),
        ({"v": [{**GOOD, "label_id": 2}]}, "label_id 2 does not match label 'Run'"),
        ({"v": [{**GOOD, "label_id": 7}]}, "label_id 7 does not match"),
        ({"v": [{**GOOD, "label_id": "1"}]}, "'label_id' must be an integer"),
        ({"v": [{**GOOD, "label_id": True}]}, "'label_id' must be an integer"),
        ({"v": [{**GOOD, "score": "high"}]}, "'score' must be a finite number"),
        ({"v": [{k: v for k, v in GOOD.items() if k != "score"}]}, "'score' must be a finite"),
        ({"v": [{**GOOD, "segment": [1.0]}]}, "'segment' must be two finite numbers"),
        ({"v": [{**GOOD, "segment": [1.0, 2.0, 3.0]}]}, "'segment' must be two"),
        ({"v": [{**GOOD, "segment": [1.0, "2"]}]}, "'segment' must be two"),
        ({"v": [{**GOOD, "segment": "1-2"}]}, "'segment' must be two"),
        ({"v": [{**GOOD, "segment": [3.0, 2.0]}]}, "negative-length segment"),
    ],
)
def test_bad_results_are_one_line_errors(tmp_path: Path, results: object, message: str) -> None:
    path = write_raw(tmp_path / "bad.json", results)
    with pytest.raises(AMNetError) as info:
        read_results(path, CLASSES)
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"results": {"v": [', "malformed results file"),
        ("[1, 2]", "no 'results'"),
        ('{"version": "x"}', "no 'results'"),
        ('{"results": {"v": [{"label": "Run", "score": NaN, "segment": [1, 2]}]}}', "finite"),
        ('{"results": {"v": [{"label": "Run", "score": 1, "segment": [1, Infinity]}]}}', "finite"),
        ('{"results": {"v": [{"label": "Run", "score": -Infinity, "segment": [1, 2]}]}}', "finite"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(AMNetError) as info:
        read_results(path, CLASSES)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(AMNetError, match="not found"):
        read_results(tmp_path / "nope.json", CLASSES)
    with pytest.raises(AMNetError, match="is a folder"):
        read_results(tmp_path, CLASSES)
