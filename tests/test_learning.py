"""AMNet learns: the tiny config trains on the tiny synthetic set on this CPU within minutes.

This is the end-to-end check of the whole training path (data → model → losses → optimiser →
EMA → chunked inference → post-processing → metric).
"""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from amnet.checkpoint import load_model
from amnet.config import load_config
from amnet.inference import actionness
from amnet.synth import foreground_mask
from amnet.train import evaluate_model, make_dataset, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_cpu.yaml"


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from amnet.cli.synth import main; raise SystemExit(main())",
            "--out",
            str(out),
            "--preset",
            "tiny",
            "--seed",
            "0",
        ],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    started = time.perf_counter()
    train(load_config(TINY), tiny_data, run, seed=0, progress=False)
    return run, time.perf_counter() - started


def test_roc_auc_helper():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_untrained_model_scores_low(tiny_data, tmp_path):
    train(load_config(TINY), tiny_data, tmp_path, epochs=0, progress=False)
    model, cfg, names = load_model(tmp_path / "last.pt")
    _, result = evaluate_model(
        model, make_dataset(cfg, tiny_data, "val_split", False, names), cfg, "cpu", progress=False
    )
    assert result.average_mAP < 0.1


def test_tiny_config_learns_within_three_minutes(trained, tiny_data):
    run, seconds = trained
    assert seconds < 180, f"training took {seconds:.0f} s"
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()
    assert "validation average mAP" in (run / "train.log").read_text()
    model, cfg, names = load_model(run / "last.pt")
    test_set = make_dataset(cfg, tiny_data, "val_split", False, names)
    _, result = evaluate_model(model, test_set, cfg, "cpu", progress=False)
    assert result.average_mAP >= 0.5, result.to_json()


def test_actionness_mask_separates_action_from_background(trained, tiny_data):
    run, _ = trained
    model, cfg, names = load_model(run / "last.pt")
    test_set = make_dataset(cfg, tiny_data, "val_split", False, names)
    scores, labels = [], []
    for i, video in enumerate(test_set.videos):
        feats = test_set[i]["feats"].numpy()
        scores.append(actionness(model, feats))
        labels.append(foreground_mask(video, len(feats)))
    auc = roc_auc(np.concatenate(scores), np.concatenate(labels))
    assert auc >= 0.9, auc


@pytest.mark.parametrize("switch", ["use_ame", "use_gam"])
def test_ablation_switches_train_and_evaluate(tiny_data, tmp_path, switch):
    cfg = load_config(TINY)
    cfg["model"][switch] = False
    summary = train(cfg, tiny_data, tmp_path, epochs=1, progress=False)
    assert summary["history"][0]["final_loss"] > 0
    model, _, _ = load_model(tmp_path / "last.pt")
    assert (model.ame is None) == (switch == "use_ame")
