import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from amnet.data import VideoFeatureDataset, collate_videos, seconds_to_snippets, snippets_to_seconds
from amnet.data.dataset import truncate_video
from amnet.errors import AMNetError

REAL = Path(__file__).resolve().parent / "fixtures" / "real_i3d"  # two real I3D videos, float16


def write_dataset(root: Path, lengths: dict[str, int], dim: int = 8, dtype=np.float32) -> Path:
    (root / "features").mkdir(parents=True)
    db = {}
    for i, (vid, t) in enumerate(lengths.items()):
        np.save(
            root / "features" / f"{vid}.npy",
            np.random.default_rng(i).random((t, dim)).astype(dtype),
        )
        duration = (t * 4 + 8) / 30
        db[vid] = {
            "subset": "Validation" if i % 2 == 0 else "Test",
            "duration": duration,
            "fps": 30.0,
            "annotations": [
                {"label": "Jump", "segment": [0.2 * duration, 0.5 * duration], "label_id": 1},
                {"label": "Run", "segment": [0.6 * duration, 0.9 * duration], "label_id": 0},
            ],
        }
    (root / "annotations.json").write_text(json.dumps({"database": db}))
    return root


def make(root: Path, subset="validation", training=False, **kw) -> VideoFeatureDataset:
    args = dict(is_training=training, input_dim=8, max_seq_len=64)
    args.update(kw)
    return VideoFeatureDataset(root / "annotations.json", root / "features", subset, **args)


def test_time_conversions_are_inverse():
    t = np.array([0.0, 1.5, 100.0])
    assert np.allclose(seconds_to_snippets(snippets_to_seconds(t, 30, 4, 16), 30, 4, 16), t)
    # Snippet 0 is centred at 8 frames = 0.2667 s (THUMOS14: 16 frames, stride 4, 30 fps).
    assert snippets_to_seconds(np.array([0.0]), 30, 4, 16)[0] == pytest.approx(8 / 30)


def test_items_are_float32_with_segments_in_snippets(tmp_path):
    ds = make(write_dataset(tmp_path, {"a": 50, "b": 40, "c": 30}, dtype=np.float64))
    assert [v.video_id for v in ds.videos] == ["a", "c"]  # subset match ignores case
    assert ds.class_names == ["Run", "Jump"]  # from label_id fields
    item = ds[0]
    assert item["feats"].dtype == torch.float32 and item["feats"].shape == (50, 8)
    duration = (50 * 4 + 8) / 30
    expected = seconds_to_snippets(np.array([0.2, 0.5]) * duration, 30, 4, 16)
    assert np.allclose(item["segments"][0].numpy(), expected, atol=1e-5)
    assert item["labels"].tolist() == [1, 0]


def test_real_i3d_files_load(tmp_path):
    ds = VideoFeatureDataset(
        REAL / "annotations.json", REAL, "test", is_training=False, input_dim=2048, max_seq_len=2304
    )
    item = ds[0]
    assert item["feats"].dtype == torch.float32 and item["feats"].shape[1] == 2048
    assert len(ds.class_names) == 18  # label ids 11 and 17 are the largest present


def test_training_crop_keeps_length_and_actions_mostly_inside():
    rng = np.random.default_rng(0)
    feats = np.zeros((1000, 4), np.float32)
    segments = np.array([[100.0, 200.0], [500.0, 520.0], [900.0, 990.0]])
    labels = np.array([0, 1, 2])
    for _ in range(50):
        out, segs, labs, _start = truncate_video(feats, segments, labels, 256, 0.5, rng)
        assert out.shape[0] == 256
        assert len(segs) >= 1 and (segs >= 0).all() and (segs <= 256).all()
        for seg, lab in zip(segs, labs, strict=True):
            orig = segments[lab]
            assert (seg[1] - seg[0]) >= 0.5 * (orig[1] - orig[0]) - 1e-9


def test_crop_ratio_shortens_short_videos():
    rng = np.random.default_rng(1)
    feats = np.zeros((100, 4), np.float32)
    seen = {
        truncate_video(feats, np.array([[10.0, 90.0]]), np.array([0]), 256, 0.5, rng, (0.5, 0.9))[
            0
        ].shape[0]
        for _ in range(30)
    }
    assert min(seen) >= 50 and max(seen) <= 90 and len(seen) > 1


def test_collate_pads_and_masks(tmp_path):
    ds = make(write_dataset(tmp_path, {"a": 50, "b": 40, "c": 30}))
    batch = collate_videos([ds[0], ds[1]], pad_multiple=32)
    assert batch["feats"].shape == (2, 64, 8)
    assert batch["lengths"].tolist() == [50, 30]
    assert batch["mask"].sum(1).tolist() == [50, 30]
    assert batch["feats"][1, 30:].abs().sum() == 0


def test_missing_feature_files_are_named(tmp_path):
    root = write_dataset(tmp_path, {"a": 50, "b": 40, "c": 30})
    (root / "features" / "c.npy").unlink()
    with pytest.raises(AMNetError, match=r"missing: .*c\.npy"):
        make(root)


def test_wrong_shape_files_are_named(tmp_path):
    root = write_dataset(tmp_path, {"a": 50, "b": 40, "c": 30})
    np.save(root / "features" / "a.npy", np.zeros((10, 5), np.float32))
    with pytest.raises(AMNetError, match=r"a\.npy \(shape \[10, 5\]"):
        make(root)


def test_empty_subset_is_an_error(tmp_path):
    root = write_dataset(tmp_path, {"a": 50})
    with pytest.raises(AMNetError, match="has no videos"):
        make(root, subset="training")


@pytest.mark.parametrize("force_upsampling", [False, True])
def test_annotations_outside_the_features_are_named(tmp_path, caplog, force_upsampling):
    """An annotation past its video's features (a wrong fps, stride or feature file) can be
    neither learnt nor found: a warning counts them; a training split with no annotation inside
    its features is an error (it would train on background only)."""
    root = write_dataset(tmp_path, {"a": 40, "b": 30, "c": 50})  # a and c: validation
    kw = {"force_upsampling": force_upsampling}
    caplog.set_level(logging.WARNING)
    make(root, training=True, **kw)
    assert not caplog.records
    ann = json.loads((root / "annotations.json").read_text())
    ann["database"]["c"]["fps"] = 300.0  # its segments now map ten times further out
    (root / "annotations.json").write_text(json.dumps(ann))
    make(root, training=True, **kw)
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert "2 of the 4 annotations of this split lie wholly outside" in record.getMessage()
    assert "first: video 'c' [" in record.getMessage()
    ann["database"]["a"]["fps"] = 300.0
    (root / "annotations.json").write_text(json.dumps(ann))
    with pytest.raises(AMNetError, match=r"4 of the 4 annotations .* check fps, feature_stride"):
        make(root, training=True, **kw)
    make(root, training=False, **kw)  # ground truth to evaluate against: a warning only
    assert "4 of the 4" in caplog.records[-1].getMessage()
