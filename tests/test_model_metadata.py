"""Model metadata is validated once, at load, by every backend: an exported ONNX model, a
TensorRT plan's sidecar and a checkpoint's config all fail with one line that names the file and
the field, before any video is run."""

import json
import math

import numpy as np
import pytest

from amnet.deploy import Detector
from amnet.errors import AMNetError
from amnet.metadata import (
    FORMAT_VERSION,
    encode_metadata,
    read_onnx_metadata,
    validate_metadata,
    write_plan_metadata,
)

# Classes of bad values, by the kind of field they are fed to.
BAD_COUNT = [0, -3, 2.5, "many", True, None, math.nan]  # integers >= 1
BAD_RATE = [0, -30.0, math.nan, math.inf, "fast", True]  # positive finite numbers
BAD_FRACTION = [1.0, -0.25, 7, math.nan, "half"]  # numbers in [0, 1)

BAD_FIELDS = [
    *[(key, v) for key in ("feature_stride", "num_frames", "max_seq_len", "input_dim") for v in BAD_COUNT],
    *[("fps", v) for v in BAD_RATE],
    *[("chunk_overlap", v) for v in BAD_FRACTION],
    ("num_classes", 0),
    ("num_classes", 4),  # disagrees with the class list
    ("class_names", "a,b,c,d,e"),
    ("class_names", ["a", "b", "c", "d"]),
    ("class_names", ["a", "b", "c", "d", ""]),
    ("class_names", ["a", "b", "c", "d", 5]),
    ("class_names", ["a", "b", "c", "d", "a"]),
    ("config", [1, 2]),
    ("config", "text"),
    ("format_version", FORMAT_VERSION + 1),
    ("format_version", 0),
    ("max_seq_len", 100),  # not a multiple of the pyramid's stride
    ("pad_multiple", 3),
]  # fmt: skip
IDS = [f"{k}={v!r}" for k, v in BAD_FIELDS]


def _expected_field(key: str) -> str:
    return "class" if key in ("num_classes", "class_names") else key


def _bad_onnx(tmp_path, source, key, value):
    import onnx

    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    props[key] = json.dumps(value) if key in ("config", "class_names") else str(value)
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    out = tmp_path / "bad.onnx"
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def good_meta(tiny_model):
    return read_onnx_metadata(tiny_model["onnx"])


@pytest.mark.parametrize(("key", "value"), BAD_FIELDS, ids=IDS)
def test_every_class_of_bad_field_is_refused(good_meta, key, value):
    """The one validator every backend runs, on text (ONNX metadata_props) and on typed JSON
    (the TensorRT sidecar)."""
    from amnet.metadata import decode_metadata

    bad = {**good_meta, key: value}
    as_text = encode_metadata(bad)
    as_text[key] = json.dumps(value) if key in ("config", "class_names") else str(value)
    for props in (as_text, json.loads(json.dumps(bad))):
        with pytest.raises(AMNetError, match=_expected_field(key)) as info:
            decode_metadata(props, "m.onnx")
        assert str(info.value).startswith("m.onnx: ") and "\n" not in str(info.value)


def test_a_key_given_twice_in_stored_json_is_refused(good_meta):
    """JSON keeps the last of two equal keys silently; in a model's stored config that would be
    a setting changed without a word."""
    from amnet.metadata import decode_metadata

    as_text = encode_metadata(good_meta)
    config = json.dumps(good_meta["config"])
    as_text["config"] = config[:-1] + ', "test_cfg": {}}'  # test_cfg again, at the end
    with pytest.raises(
        AMNetError, match=r"'config' \(key 'test_cfg' appears twice in one object\)"
    ):
        decode_metadata(as_text, "m.onnx")


# One case of each kind per backend: the validator runs when a Detector opens the file.
WIRING = [("fps", 0), ("chunk_overlap", 1.0), ("class_names", ["a", "b"]), ("max_seq_len", 2.5)]


@pytest.mark.parametrize(("key", "value"), WIRING)
def test_bad_onnx_metadata_is_refused_at_load(tmp_path, tiny_model, key, value):
    path = _bad_onnx(tmp_path, tiny_model["onnx"], key, value)
    with pytest.raises(AMNetError, match=_expected_field(key)) as info:
        Detector(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize(("key", "value"), WIRING)
def test_bad_plan_sidecar_is_refused_before_tensorrt(tmp_path, good_meta, key, value):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    write_plan_metadata(
        plan, {**good_meta, key: value}, {"max_batch": 2, "max_len": 256, "min_len": 1}
    )
    with pytest.raises(AMNetError, match=_expected_field(key)) as info:
        Detector(plan, device="cuda")
    assert "model.plan" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "engine",
    [
        {"max_batch": 0},
        {"max_len": "big"},
        {"min_len": 300, "max_len": 256},
        [4],
        {"max_batch": 1.5},
    ],
)
def test_bad_engine_limits_are_refused(tmp_path, tiny_model, engine):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    meta = read_onnx_metadata(tiny_model["onnx"])
    write_plan_metadata(plan, meta, {})
    side = plan.with_name("model.plan.json")
    data = json.loads(side.read_text())
    data["engine"] = engine
    side.write_text(json.dumps(data))
    with pytest.raises(AMNetError, match="engine") as info:
        Detector(plan, device="cuda")
    assert "model.plan.json" in str(info.value)


@pytest.mark.parametrize(
    "test_cfg", [{"nms_method": "greedy"}, {"sigma": 0}, {"colour": "red"}, [1, 2]]
)
def test_bad_postprocess_settings_in_metadata_are_refused(tmp_path, tiny_model, test_cfg):
    config = read_onnx_metadata(tiny_model["onnx"])["config"]
    config["test_cfg"] = test_cfg
    path = _bad_onnx(tmp_path, tiny_model["onnx"], "config", config)
    with pytest.raises(AMNetError, match="test_cfg") as info:
        Detector(path)
    assert str(path) in str(info.value)


# A checkpoint's config feeds the same metadata; bad values there are config errors.
BAD_CONFIG = [
    *[(("dataset", key), v) for key in ("feature_stride", "num_frames", "max_seq_len") for v in BAD_COUNT],
    *[(("dataset", "default_fps"), v) for v in BAD_RATE],
    *[(("test_cfg", "chunk_overlap"), v) for v in BAD_FRACTION],
    (("test_cfg", "nms_method"), "greedy"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "value"), BAD_CONFIG, ids=[f"{w[1]}={v!r}" for w, v in BAD_CONFIG]
)
def test_bad_checkpoint_config_is_refused(tiny_model, where, value):
    import torch

    from amnet.config import config_from_dict
    from amnet.deploy.backend_torch import metadata_from_config
    from amnet.deploy.backends import check_metadata

    raw = torch.load(tiny_model["pt"], weights_only=True)
    section, key = where
    raw["config"][section][key] = value
    field = "class" if key == "num_classes" else key
    # What loading a checkpoint runs: its config, then the metadata derived from it.
    with pytest.raises(AMNetError, match=field) as info:
        cfg = config_from_dict(raw["config"], "bad.pt")
        check_metadata(metadata_from_config(cfg, raw["class_names"]), "bad.pt")
    assert str(info.value).startswith("bad.pt")


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("dataset", "default_fps"), math.nan),
        (("test_cfg", "sigma"), -1.0),
        (("dataset", "num_classes"), 4),  # disagrees with the five class names
    ],
)
def test_bad_checkpoint_is_refused_at_load(tmp_path, tiny_model, where, value):
    import torch

    raw = torch.load(tiny_model["pt"], weights_only=True)
    raw["config"][where[0]][where[1]] = value
    path = tmp_path / "bad.pt"
    torch.save(raw, path)
    with pytest.raises(AMNetError, match=_expected_field(where[1])) as info:
        Detector(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("names", [None, "abc", ["a", "b", "c", "d", 3], ["a", "", "c", "d", "e"]])
def test_bad_checkpoint_class_names_are_refused(tmp_path, tiny_model, names):
    import torch

    raw = torch.load(tiny_model["pt"], weights_only=True)
    raw["class_names"] = names
    path = tmp_path / "bad.pt"
    torch.save(raw, path)
    with pytest.raises(AMNetError, match="class_names"):
        Detector(path)


def test_valid_metadata_survives_the_checks(tiny_model):
    meta = read_onnx_metadata(tiny_model["onnx"])
    assert validate_metadata(meta) == meta
    # Text as stored in ONNX metadata_props decodes to the same typed values.
    from amnet.metadata import decode_metadata

    assert decode_metadata(encode_metadata(meta)) == meta
    det = Detector(tiny_model["onnx"])
    assert det.fps == meta["fps"] and det.num_classes == len(meta["class_names"])
    assert np.isfinite(det.duration_of(10))
