"""Fixed-length features (``dataset.force_upsampling``, ActivityNet's convention): every video is
resampled to ``max_seq_len`` snippets with a time base of its own, in training, evaluation,
export and the runtime alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import run_main

from amnet.errors import AMNetError
from amnet.timebase import (
    resample_snippets,
    resampled_timebase,
    seconds_to_snippets,
    snippets_duration,
    snippets_to_seconds,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("total", "length"), [(1, 64), (5, 64), (100, 64), (64, 64), (300, 64), (7, 3)]
)
def test_resampling_is_linear_interpolation_on_torchs_grid(total, length):
    x = np.random.default_rng(total).normal(size=(total, 8)).astype(np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x.T.copy())[None], size=length, mode="linear", align_corners=False
    )[0].T.numpy()
    got = resample_snippets(x, length)
    assert got.shape == (length, 8) and got.dtype == np.float32
    # torch places its samples in float32, this in float64: equal to float32 rounding.
    np.testing.assert_allclose(got, want, atol=1e-4)
    if total == length:
        assert np.array_equal(got, x)


def test_a_memory_mapped_video_resamples_like_one_in_memory(tmp_path):
    x = np.random.default_rng(0).normal(size=(5000, 16)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r", allow_pickle=False)
    assert np.array_equal(resample_snippets(mapped, 128), resample_snippets(x, 128))


def test_the_resampled_time_base_covers_the_same_frames():
    fps, stride, frames = 25.0, 16, 16
    for total in (1, 50, 192, 1000):
        new_stride, new_frames = resampled_timebase(total, stride, frames, 192)
        assert snippets_duration(192, fps, new_stride, new_frames) == pytest.approx(
            snippets_duration(total, fps, stride, frames)
        )
        # Snippet i of 192 is centred at (i + 0.5) / 192 of the covered span.
        centre = snippets_to_seconds(np.arange(192), fps, new_stride, new_frames)
        span = snippets_duration(total, fps, stride, frames)
        np.testing.assert_allclose(centre, (np.arange(192) + 0.5) / 192 * span)


def resampled_cfg(num_classes: int | None = None) -> dict:
    from amnet.config import load_config

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    cfg["dataset"].update(force_upsampling=True, max_seq_len=64)
    cfg["train_cfg"]["eval_every"] = 0
    if num_classes is not None:
        cfg["dataset"]["num_classes"] = num_classes
    return cfg


def test_dataset_items_are_resampled_with_their_own_time_base(models):
    from amnet.annotations import load_annotations
    from amnet.data import make_dataset

    cfg = resampled_cfg()
    dataset = make_dataset(cfg, models["data"], "val_split", False)
    videos = load_annotations(models["data"] / "annotations.json")
    for i, video in enumerate(dataset.videos):
        item = dataset[i]
        total = np.load(dataset.feature_path(video.video_id), mmap_mode="r").shape[0]
        stride, frames = resampled_timebase(total, 4, 16, 64)
        assert item["feats"].shape == (64, 2048) and total != 64
        assert (item["feat_stride"], item["num_frames"]) == (stride, frames)
        # The targets are the annotation's seconds on the item's own grid.
        fps = videos[video.video_id].fps
        want = np.clip(seconds_to_snippets(video.segments, fps, stride, frames), 0, 64)
        np.testing.assert_allclose(item["segments"].numpy(), want, rtol=1e-6, atol=1e-4)
    train_set = make_dataset(cfg, models["data"], "train_split", True)
    assert all(train_set[i]["feats"].shape[0] <= 64 for i in range(len(train_set)))


@pytest.fixture(scope="module")
def resampled_model(models, tmp_path_factory) -> dict[str, Path]:
    """A tiny AMNet trained one epoch with force_upsampling (64 snippets), and its ONNX export;
    built once per run for all pytest workers (read-only)."""
    from conftest import shared

    def build(base: Path) -> dict[str, Path]:
        from amnet.export.to_onnx import export_onnx
        from amnet.train import train

        train(resampled_cfg(), models["data"], base / "run", epochs=1, progress=False)
        ckpt = base / "run" / "last.pt"
        return {"pt": ckpt, "onnx": export_onnx(ckpt, base / "model.onnx").path}

    return shared(tmp_path_factory, "resampled_model", build)


def test_runtime_gives_the_evaluations_detections(resampled_model, models):
    from amnet.checkpoint import load_model
    from amnet.data import make_dataset
    from amnet.deploy import Detector
    from amnet.evaluation import evaluate_model
    from amnet.metadata import read_onnx_metadata

    model, cfg, names = load_model(resampled_model["pt"])
    dataset = make_dataset(cfg, models["data"], "val_split", False, names)
    want, _ = evaluate_model(model, dataset, cfg, torch.device("cpu"), progress=False)
    meta = read_onnx_metadata(resampled_model["onnx"])
    assert meta["force_upsampling"] is True and meta["format_version"] == 2
    assert "force_upsampling" not in read_onnx_metadata(models["onnx"])  # others stay version 1
    assert read_onnx_metadata(models["onnx"])["format_version"] == 1
    with Detector(resampled_model["pt"]) as pt, Detector(resampled_model["onnx"]) as onnx:
        assert pt.force_upsampling and onnx.force_upsampling
        videos = [np.load(dataset.feature_path(v.video_id)) for v in dataset.videos]
        for video, array in zip(dataset.videos, videos, strict=True):
            got = pt.detect_raw(array, duration=video.duration, fps=video.fps)
            assert np.array_equal(got.segments, want[video.video_id].segments)
            assert np.array_equal(got.scores, want[video.video_id].scores)
        # The batch path and ONNX Runtime: one window per video, the same time base.
        for a, b in zip(pt.detect_raw_many(videos), onnx.detect_raw_many(videos), strict=True):
            top = min(len(a), len(b), 5)
            np.testing.assert_allclose(a.segments[:top], b.segments[:top], atol=1e-3)
            np.testing.assert_allclose(a.scores[:top], b.scores[:top], atol=1e-4)
        # A long video is one window too: its detections span its whole duration.
        long = np.concatenate(videos * 20)
        dets = onnx.detect_raw(long)
        assert len(dets) and dets.segments.max() > 0.5 * onnx.duration_of(len(long))
        with pytest.raises(AMNetError, match="cannot follow a live stream"):
            onnx.stream()


def test_the_stream_command_refuses_a_resampled_model(resampled_model):
    proc = run_main("amnet.deploy.infer_cli", "--engine", str(resampled_model["onnx"]),
                    "--stream", "--dim", "2048")  # fmt: skip
    assert proc.returncode == 2 and "cannot follow a live stream" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_force_upsampling_must_be_a_boolean(tmp_path):
    from amnet.config import load_config

    path = tmp_path / "bad.yaml"
    path.write_text(
        f"base: {ROOT / 'configs' / 'tiny_cpu.yaml'}\ndataset:\n  force_upsampling: 1\n"
    )
    with pytest.raises(AMNetError, match=r"dataset\.force_upsampling must be true or false"):
        load_config(path)


def test_metadata_force_upsampling_must_be_a_boolean(resampled_model):
    from amnet.metadata import decode_metadata, encode_metadata, read_onnx_metadata

    meta = read_onnx_metadata(resampled_model["onnx"])
    assert decode_metadata(encode_metadata(meta)) == meta  # round trip as stored
    for bad in ("yes", 1):
        with pytest.raises(AMNetError, match="force_upsampling"):
            decode_metadata({**encode_metadata(meta), "force_upsampling": bad})
    assert json.dumps(meta["force_upsampling"]) == "true"


def test_a_resampled_model_gets_its_timeline_and_mask_plots(resampled_model, models, tmp_path):
    pytest.importorskip("matplotlib")
    video = sorted((models["data"] / "features").glob("*.npy"))[0]
    proc = run_main("amnet.deploy.infer_cli", "--engine", str(resampled_model["pt"]), str(video),
                    "--plot", str(tmp_path / "plots"), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        f"{video.stem}.png",
        f"{video.stem}_ame.png",
    }


def test_static_int8_calibrates_on_what_the_model_sees():
    from amnet.export.quantize import calibration_windows

    rng = np.random.default_rng(0)
    videos = [rng.normal(size=(t, 8)).astype(np.float32) for t in (30, 500, 64)]
    windows = calibration_windows(videos, 64, 0.25, 10, force_upsampling=True)
    assert [(x.shape, int(n[0])) for x, n in windows] == [((1, 64, 8), 64)] * 3
    np.testing.assert_array_equal(windows[1][0][0], resample_snippets(videos[1], 64))
    # Without it, the videos' own windows (the 500-snippet one in several).
    assert len(calibration_windows(videos, 64, 0.25, 10)) > 3
