"""Plots of the runtime: detection timelines and the AME figure (amnet.viz, amnet-viz)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from clitools import run_main

pytest.importorskip("matplotlib")

from amnet import viz
from amnet.detections import Detections

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def assert_png(path: Path) -> tuple[int, int]:
    """A complete PNG of a sane size; returns (width, height)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 400 <= width <= 4000 and 150 <= height <= 4000, (path, width, height)
    assert len(data) > 5000, path  # something was drawn
    return width, height


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A tiny synthetic set, an initialised tiny AMNet checkpoint and its results file."""
    import torch

    from amnet.checkpoint import save_checkpoint
    from amnet.config import load_config
    from amnet.deploy import Detector
    from amnet.model import AMNet
    from amnet.results import write_results
    from amnet.synth import draw_layout, preset_class_names, write_dataset

    base = tmp_path_factory.mktemp("viz")
    names = preset_class_names("tiny")
    write_dataset(base / "data", draw_layout("tiny", videos=3, seed=1, subsets=["test"]), names, progress=False)  # fmt: skip
    cfg = load_config(TINY)
    torch.manual_seed(0)
    net = AMNet.from_config(cfg)
    ckpt = base / "tiny.pt"
    save_checkpoint(ckpt, config=cfg, class_names=names, model=net.state_dict(), ema=None)
    det = Detector(ckpt)
    feats = {p.stem: np.load(p) for p in sorted((base / "data" / "features").glob("*.npy"))}
    results = {vid: det.detect_raw(x) for vid, x in feats.items()}
    write_results(base / "results.json", results, names)
    return {
        "base": base,
        "ckpt": ckpt,
        "names": names,
        "feats": feats,
        "results": results,
        "model": det.backend.model,
        "annotations": base / "data" / "annotations.json",
    }


def test_timeline_with_and_without_ground_truth(world, tmp_path):
    vid = next(iter(world["results"]))
    dets = world["results"][vid]
    gt = viz.GroundTruth(np.array([[1.0, 3.0], [10.0, 12.5]]), np.array([0, 2]))
    a = viz.plot_timeline(tmp_path / "gt.png", vid, dets, world["names"], 40.0, gt)
    b = viz.plot_timeline(tmp_path / "nogt.png", vid, dets, world["names"], 40.0, top=5)
    c = viz.plot_timeline(tmp_path / "empty.png", vid, Detections.empty(), world["names"], 40.0)
    for path in (a, b, c):
        assert_png(path)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_ame_profile_and_figure(world, tmp_path):
    from amnet.inference import actionness

    model = world["model"]
    feats = next(iter(world["feats"].values()))
    profile = viz.ame_profile(model, feats, 256, 0.25)
    assert profile is not None
    for curve in (profile.mask, profile.contrast_before, profile.contrast_after, profile.norm_before, profile.norm_after, profile.norm_input):  # fmt: skip
        assert curve.shape == (len(feats),) and np.isfinite(curve).all()
    np.testing.assert_allclose(profile.mask, actionness(model, feats), rtol=1e-6)
    assert ((profile.mask > 0) & (profile.mask < 1)).all()
    # Longer than max_seq_len: chunked, overlaps averaged, every snippet covered.
    long = np.concatenate([feats, feats, feats])
    chunked = viz.ame_profile(model, long, 256, 0.25)
    assert chunked.norm_after.shape == (len(long),) and (chunked.norm_after > 0).all()
    gt = viz.GroundTruth(np.array([[2.0, 4.0]]), np.array([1]))
    assert_png(viz.plot_ame(tmp_path / "ame.png", "v", profile, 30.0, 4, 16, gt))
    assert_png(viz.plot_ame(tmp_path / "ame_nogt.png", "v", chunked, 30.0, 4, 16))


def run_viz(*args: str) -> subprocess.CompletedProcess:
    return run_main("amnet.viz", *args)


def test_amnet_viz_cli(world, tmp_path):
    out = tmp_path / "figs"
    vids = sorted(world["results"])
    proc = run_viz(
        "--results", str(world["base"] / "results.json"),
        "--gt", str(world["annotations"]), "--subset", "test",
        "--features", str(world["base"] / "data" / "features"), "--ckpt", str(world["ckpt"]),
        "--out", str(out), "--videos", ",".join(vids[:2]), "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    expected = sorted([f"{v}.png" for v in vids[:2]] + [f"{v}_ame.png" for v in vids[:2]])
    assert sorted(p.name for p in out.iterdir()) == expected
    sizes = {p.name: assert_png(p) for p in out.iterdir()}
    assert sizes[f"{vids[0]}_ame.png"][1] > sizes[f"{vids[0]}.png"][1]  # three panels are taller

    # Results alone (class names read from the results file): timelines only.
    bare = tmp_path / "bare"
    proc = run_viz("--results", str(world["base"] / "results.json"), "--out", str(bare), "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in bare.iterdir()) == [f"{v}.png" for v in vids]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ckpt", "x.pt"], "go together"),
        (["--videos", "no_such_video"], "not in"),
        (["--top", "0"], "--top"),
        (["--min-score", "3"], "--min-score must be in [0, 1]"),  # would hide every detection
        (["--min-score", "nan"], "--min-score must be in [0, 1]"),
        (["--subset", "test"], "--gt"),
    ],
)
def test_amnet_viz_errors(world, tmp_path, extra, message):
    proc = run_viz("--results", str(world["base"] / "results.json"), "--out", str(tmp_path / "o"), *extra)  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_results_without_ground_truth_names(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            {
                "results": {
                    "a": [{"label": "Jump", "label_id": 2, "score": 0.5, "segment": [0, 1]}],
                    "b": [{"label": "Run", "label_id": 0, "score": 0.4, "segment": [1, 2]}],
                }
            }
        )
    )
    assert viz._class_names_from_results(path) == ["Run", "class_1", "Jump"]
