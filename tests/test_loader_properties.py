"""Property tests: whatever bytes or arrays reach a loader, the result is either a correct value
or one clean AMNetError, never another exception, a hang or a silently wrong array."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from amnet.annotations import load_annotations
from amnet.config import load_config
from amnet.errors import AMNetError
from amnet.fileio import load_features, read_features
from amnet.metadata import read_onnx_metadata, read_plan_metadata
from amnet.results import read_results

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
NPY_MAGIC = b"\x93NUMPY"


def assert_clean(error: AMNetError) -> None:
    text = str(error)
    assert text and "\n" not in text.strip() and "Traceback" not in text


# Random bytes, some starting like the real thing so the parsers get past their first check.
PREFIXES = [
    b"",
    NPY_MAGIC,
    NPY_MAGIC + b"\x01\x00v\x00{'descr': '<f4', ",
    b"PK\x03\x04",
    b"{",
    b"\x08\x07\x12",
]
raw_files = st.builds(lambda p, body: p + body, st.sampled_from(PREFIXES), st.binary(max_size=400))  # fmt: skip


def _loaders(tmp: Path) -> dict[str, tuple[str, object]]:
    """file name -> loader of that file (each the entry point a command uses)."""
    return {
        "features.npy": lambda p: read_features(p, 16),
        "annotations.json": load_annotations,
        "results.json": lambda p: read_results(p, ["a", "b"]),
        "config.yaml": load_config,
        "model.onnx": read_onnx_metadata,
        "model.plan.json": lambda p: read_plan_metadata(p.with_name("model.plan")),
    }


@pytest.mark.parametrize(
    "name",
    ["features.npy", "annotations.json", "results.json", "config.yaml", "model.onnx", "model.plan.json"],
)  # fmt: skip
@SETTINGS
@given(data=raw_files)
def test_random_bytes_are_a_clean_error(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    try:
        _loaders(tmp_path)[name](path)
    except AMNetError as exc:
        assert_clean(exc)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_checkpoints_are_a_clean_error(tmp_path, data):
    from amnet.checkpoint import read_checkpoint

    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as archive:  # torch checkpoints are zip archives
        archive.writestr("x/data.pkl", data)
        archive.writestr("x/version", b"3\n")
    with pytest.raises(AMNetError) as info:
        read_checkpoint(path)
    assert_clean(info.value)


dtypes = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int8, np.int64, np.uint16, np.bool_, np.complex64]
)
arrays = dtypes.flatmap(
    lambda dt: hnp.arrays(
        dt,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        elements=hnp.from_dtype(np.dtype(dt), allow_nan=True, allow_infinity=True)
        if np.dtype(dt).kind in "fc"
        else None,
    )
)


def _expected(array: np.ndarray, dim: int) -> np.ndarray | None:
    """What a loader must return for ``array``, or None when it must refuse it."""
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[1] != dim:
        return None
    with np.errstate(over="ignore"):
        cast = array.astype(np.float32)
    return cast if np.isfinite(cast).all() else None


@SETTINGS
@given(array=arrays, dim=st.integers(1, 6))
def test_random_arrays_load_exactly_or_are_refused(tmp_path, array, dim):
    path = tmp_path / "f.npy"
    np.save(path, array)
    expected = _expected(array, dim)
    for load in (lambda p: read_features(p, dim), lambda p: load_features(p, dim)):
        try:
            got = load(path)
        except AMNetError as exc:
            assert expected is None, f"refused a good array: {exc}"
            assert_clean(exc)
            continue
        assert expected is not None, f"accepted a bad array {array.dtype} {array.shape}"
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def detector(tiny_model):
    from amnet.deploy import Detector

    return Detector(tiny_model["onnx"])


@SETTINGS
@given(array=arrays)
def test_random_arrays_reach_the_runtime_exactly_or_are_refused(detector, array):
    wide = np.repeat(array, 2048 // max(array.shape[-1], 1) + 1, axis=-1)[..., :2048] if array.ndim == 2 and array.shape[1] else array  # fmt: skip
    expected = _expected(wide, 2048)
    try:
        got = detector.prepare(wide)
    except AMNetError as exc:
        assert expected is None, f"refused a good array: {exc}"
        assert_clean(exc)
        return
    assert expected is not None, f"accepted a bad array {wide.dtype} {wide.shape}"
    np.testing.assert_array_equal(got, expected)
    assert isinstance(detector(got), list)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip
entries = st.fixed_dictionaries(
    {"label": st.sampled_from(["a", "b", "c", 3]), "score": json_values | st.floats(0, 1), "segment": json_values | st.lists(st.floats(0, 100), min_size=2, max_size=2)}
)  # fmt: skip


@SETTINGS
@given(
    results=st.dictionaries(st.text(max_size=12), st.lists(entries, max_size=3) | json_values, max_size=4)
)  # fmt: skip
def test_random_results_files_are_read_or_refused(tmp_path, results):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"version": "x", "results": results}))
    try:
        out = read_results(path, ["a", "b"])
    except AMNetError as exc:
        assert_clean(exc)
        return
    assert list(out) == list(results)
    for vid, dets in out.items():
        assert len(dets) == len(results[vid])
        assert (
            np.isfinite(dets.segments).all() and (dets.segments[:, 1] >= dets.segments[:, 0]).all()
        )


@SETTINGS
@given(
    database=st.dictionaries(
        st.text(max_size=12),
        st.fixed_dictionaries(
            {"subset": st.sampled_from(["test", "validation", 1]), "duration": json_values | st.floats(0, 500), "fps": json_values | st.just(30.0), "annotations": st.lists(entries, max_size=3) | json_values}
        ) | json_values,
        max_size=4,
    )
)  # fmt: skip
def test_random_annotation_files_are_read_or_refused(tmp_path, database):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"database": database}))
    try:
        videos = load_annotations(path)
    except AMNetError as exc:
        assert_clean(exc)
        return
    assert set(videos) == set(database)
    for video in videos.values():
        assert "/" not in video.video_id and video.video_id not in ("", ".", "..")
        assert np.isfinite(video.segments).all()
