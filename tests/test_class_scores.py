"""Class-agnostic localizers and video-level class scores (the ActivityNet protocol): the fusion
itself, the classifier files it reads, one-class training, and the commands that use it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from clitools import run_main

from amnet.annotations import build_label_map, load_annotations
from amnet.class_scores import (
    AGNOSTIC_CLASS,
    agnostic_ground_truth,
    fuse_class_scores,
    read_class_scores,
)
from amnet.detections import Detections
from amnet.errors import AMNetError

ROOT = Path(__file__).resolve().parents[1]


def test_each_detection_is_repeated_for_the_top_classes_with_the_geometric_mean_score():
    det = Detections([[0.0, 1.0], [2.0, 4.0]], [0.9, 0.4], [0, 0])
    fused = fuse_class_scores(det, np.array([0.1, 0.6, 0.3]), topk=2)
    want = sorted(
        [(math.sqrt(s * p), c, seg) for c, p in ((1, 0.6), (2, 0.3))
         for s, seg in ((0.9, (0.0, 1.0)), (0.4, (2.0, 4.0)))],
        key=lambda x: -x[0],
    )  # fmt: skip
    assert fused.scores.tolist() == pytest.approx([w[0] for w in want])
    assert fused.labels.tolist() == [w[1] for w in want]
    assert [tuple(s) for s in fused.segments.tolist()] == [w[2] for w in want]
    # topk beyond the classes: every class once; ties keep the lower class id first.
    tied = fuse_class_scores(det, np.array([0.5, 0.5]), topk=5)
    assert len(tied) == 4 and tied.labels.tolist() == [0, 1, 0, 1]
    assert len(fuse_class_scores(Detections.empty(), np.array([1.0]), 2)) == 0
    with pytest.raises(AMNetError, match="topk"):
        fuse_class_scores(det, np.array([1.0]), 0)
    again = fuse_class_scores(det, [0.1, 0.6, 0.3], np.int64(2))  # a list, a numpy integer
    assert again.scores.tolist() == fused.scores.tolist()
    assert again.labels.tolist() == fused.labels.tolist()


@pytest.mark.parametrize(
    "probabilities",
    [[0.2, np.nan], [0.2, -0.1], [0.2, np.inf], [[0.2, 0.8]], 0.5, [], ["a", "b"]],
    ids=["nan", "negative", "inf", "2-d", "scalar", "empty", "text"],
)
def test_fusion_refuses_probabilities_that_are_not_one_per_class(probabilities):
    """The classifier file reader refuses these; in Python they would give NaN or infinite
    fused scores, or an index error deep inside, so they are refused the same way."""
    det = Detections([[0.0, 1.0]], [0.9], [0])
    with pytest.raises(AMNetError, match="one finite, non-negative value per class"):
        fuse_class_scores(det, probabilities)


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_classifier_files_in_the_fields_forms(tmp_path):
    both = read_class_scores(write(tmp_path / "a.json", {"results": {"abc": [0.2, 0.8]},
                                                         "class": ["Run", "Jump"]}))  # fmt: skip
    assert both.names == ["Run", "Jump"] and both.of("abc").tolist() == [0.2, 0.8]
    # ActivityNet ids match with or without their v_ prefix, both ways.
    assert both.has("v_abc") and not both.has("v_abd")
    plain = read_class_scores(write(tmp_path / "b.json", {"v_x": [1, 0]}), ["A", "B"])
    assert plain.names == ["A", "B"] and plain.of("x").tolist() == [1.0, 0.0]
    with pytest.raises(AMNetError, match="no class scores for video 'y'"):
        plain.of("y")


@pytest.mark.parametrize(
    ("content", "names", "message"),
    [
        ([0.1, 0.9], ["A", "B"], "a class score file is a JSON object"),
        ({"results": {"x": [0.5, 0.5]}}, None, "no 'class' list"),
        ({"results": {"x": [0.5]}, "class": ["A", "A"]}, None, "distinct"),
        ({"results": {}, "class": ["A"]}, None, "no videos"),
        ({"results": {"x": [0.5]}}, ["A", "B"], "expected 2"),  # one value per class
        ({"results": {"x": [-0.1, 1.0]}}, ["A", "B"], "non-negative"),
        ({"results": {"x": ["0.1", 1.0]}}, ["A", "B"], "finite"),
        ({"results": {"x": [True, 1.0]}}, ["A", "B"], "finite"),
        ({"results": {"x": 0.5}}, ["A", "B"], "finite"),
        ({"results": {"../x": [0.5, 0.5]}}, ["A", "B"], "video id"),
    ],
    ids=["not-object", "no-names", "duplicate-names", "empty", "length", "negative",
         "string", "bool", "not-list", "path-id"],
)  # fmt: skip
def test_bad_classifier_files_are_one_error_naming_the_file(tmp_path, content, names, message):
    path = write(tmp_path / "scores.json", content)
    with pytest.raises(AMNetError, match=message) as info:
        read_class_scores(path, names)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "nan.json").write_text('{"results": {"x": [NaN, 1.0]}, "class": ["A", "B"]}')
    with pytest.raises(AMNetError, match=r"nan\.json"):
        read_class_scores(tmp_path / "nan.json")


def test_one_class_datasets_are_class_agnostic(models):
    from amnet.config import load_config
    from amnet.data import make_dataset

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    cfg["dataset"]["num_classes"] = 1
    dataset = make_dataset(cfg, models["data"], "val_split", False)
    assert dataset.class_names == [AGNOSTIC_CLASS]
    assert all(v.labels and not v.label_ids.any() for v in dataset.videos)
    item = dataset[0]
    assert len(item["labels"]) == len(dataset.videos[0].labels) and not item["labels"].any()
    agnostic = agnostic_ground_truth(dataset.videos)
    assert all(set(v.labels) == {AGNOSTIC_CLASS} for v in agnostic.values())
    assert any(len(set(v.labels)) > 1 for v in dataset.videos)  # the originals keep theirs


@pytest.fixture(scope="module")
def agnostic_run(models, tmp_path_factory) -> dict[str, Path]:
    """A one-class tiny AMNet (one epoch on the session's six-video set) and a classifier file
    that knows each test video's classes."""
    from amnet.config import load_config
    from amnet.train import train

    base = tmp_path_factory.mktemp("agnostic")
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    cfg["dataset"]["num_classes"] = 1
    train(cfg, models["data"], base / "run", epochs=1, progress=False)
    # Validation scores it on finding actions, and says so.
    assert "validation average mAP" in (log := (base / "run" / "train.log").read_text())
    assert "class-agnostic" in log
    ann = models["data"] / "annotations.json"
    videos = load_annotations(ann)
    names = build_label_map(videos.values(), ann)
    scores = {}
    for vid, video in videos.items():
        p = np.full(len(names), 0.02)
        for label in video.labels:
            p[names.index(label)] = 1.0
        scores[vid] = (p / p.sum()).tolist()
    classifier = write(base / "classes.json", {"results": scores, "class": names})
    # The class-agnostic model's own detections of one test video, as amnet-infer writes them.
    raw = base / "raw.json"
    test = next(p for p in sorted((models["data"] / "features").glob("*.npy")) if "test" in p.name)
    proc = run_main("amnet.deploy.infer_cli", "--engine", str(base / "run" / "last.pt"),
                    str(test), "-o", str(raw), "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {"ckpt": base / "run" / "last.pt", "classes": classifier, "ann": ann, "raw": raw}


def mean_ap(proc) -> float:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["average_mAP"]


def test_checkpoint_and_results_file_give_the_same_fused_and_agnostic_maps(
    agnostic_run, models, tmp_path
):
    ckpt, classes, ann = agnostic_run["ckpt"], agnostic_run["classes"], agnostic_run["ann"]
    model_eval = ("amnet.cli.evaluate", "--ckpt", str(ckpt), "--data", str(models["data"]),
                  "--subset", "test", "--json")  # fmt: skip
    file_eval = ("amnet.cli.evaluate", "--gt", str(ann), "--subset", "test", "--json")
    # Model mode: a one-class checkpoint alone is scored class-agnostically ...
    raw, fused = tmp_path / "raw.json", tmp_path / "fused.json"
    agnostic = mean_ap(run_main(*model_eval, "--out", str(raw)))
    # ... and with the classifier file, against the five classes.
    fused_map = mean_ap(run_main(*model_eval, "--class-scores", str(classes), "--out", str(fused)))
    labels = {d["label"] for ds in json.loads(fused.read_text())["results"].values() for d in ds}
    assert labels <= set(build_label_map(load_annotations(ann).values())) and len(labels) > 1
    assert fused_map > 0 and agnostic > 0
    # File mode gives the same numbers from the files model mode wrote.
    assert mean_ap(run_main(*file_eval, "--pred", str(raw), "--class-agnostic")) == agnostic
    assert mean_ap(run_main(*file_eval, "--pred", str(fused))) == fused_map
    from_raw = mean_ap(run_main(*file_eval, "--pred", str(raw), "--class-scores", str(classes)))
    assert from_raw == pytest.approx(fused_map, abs=1e-12)

    # amnet-infer fuses as file mode does.
    feats = models["data"] / "features"
    tests = [str(p) for p in sorted(feats.glob("*.npy")) if "test" in p.name]
    infer_raw, infer_fused = tmp_path / "infer_raw.json", tmp_path / "infer_fused.json"
    for extra, path in (((), infer_raw), (("--class-scores", str(classes)), infer_fused)):
        proc = run_main("amnet.deploy.infer_cli", "--engine", str(ckpt), *tests, *extra,
                        "-o", str(path), "-q")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    assert mean_ap(run_main(*file_eval, "--pred", str(infer_fused))) == pytest.approx(
        mean_ap(run_main(*file_eval, "--pred", str(infer_raw), "--class-scores", str(classes))),
        abs=1e-12,
    )
    # Every fused detection is a raw one under one of the video's two best classes.
    raw_results = json.loads(infer_raw.read_text())["results"]
    scores = read_class_scores(classes)
    for vid, dets in json.loads(infer_fused.read_text())["results"].items():
        assert len(dets) == 2 * len(raw_results[vid])
        top = np.argsort(-scores.of(vid), kind="stable")[:2]
        assert {d["label"] for d in dets} <= {scores.names[c] for c in top}
        best, p = raw_results[vid][0], scores.of(vid)[top[0]]
        assert dets[0]["label"] == scores.names[top[0]] and dets[0]["label_id"] == top[0]
        assert dets[0]["score"] == pytest.approx(math.sqrt(best["score"] * p))
        assert dets[0]["segment"] == best["segment"]


def test_fusion_refuses_what_it_cannot_do_in_one_line(agnostic_run, models, tmp_path):
    ckpt, classes, ann = agnostic_run["ckpt"], agnostic_run["classes"], agnostic_run["ann"]
    feats = models["data"] / "features"
    one = sorted(feats.glob("*.npy"))[0]
    known = read_class_scores(classes)
    probabilities = {v: p.tolist() for v, p in known.scores.items()}
    other_names = ["X" + n for n in known.names]
    other = write(tmp_path / "other.json", {"results": probabilities, "class": other_names})
    partial = write(tmp_path / "partial.json", {"results": {"nobody": [0.2] * 5},
                                               "class": known.names})  # fmt: skip
    out = tmp_path / "out.json"
    multi = write(tmp_path / "multi.json", {"results": {"v": [
        {"label": name, "score": 0.5, "segment": [1.0, 2.0]} for name in known.names[:2]]}})  # fmt: skip
    infer = ("amnet.deploy.infer_cli", "--engine")
    cases = [
        # A multi-class model has its classes already.
        ((*infer, str(models["pt"]), str(one), "--class-scores", str(classes)), "class-agnostic"),
        # A video the classifier lacks fails before any inference, and writes nothing.
        ((*infer, str(ckpt), str(one), "--class-scores", str(partial), "-o", str(out)),
         "no class scores for 1 video"),
        ((*infer, str(ckpt), str(one), "--class-topk", "2"), "goes with --class-scores"),
        ((*infer, str(ckpt), str(one), "--class-scores", str(classes), "--class-topk", "0"),
         ">= 1"),
        ((*infer, str(ckpt), "--stream", "--dim", "2048", "--class-scores", str(classes)),
         "not with --stream"),
        # On Ray too, before any cluster starts.
        ((*infer, str(ckpt), str(one), "--workers", "2", "--class-scores", str(partial)),
         "no class scores for 1 video"),
        (("amnet.cli.evaluate", "--ckpt", str(models["pt"]), "--data", str(models["data"]),
          "--class-scores", str(classes)), "class-agnostic model"),
        (("amnet.cli.evaluate", "--ckpt", str(ckpt), "--data", str(models["data"]),
          "--class-scores", str(partial), "--out", str(out)), "no class scores for video"),
        (("amnet.cli.evaluate", "--gt", str(ann), "--subset", "test", "--pred", str(ann),
          "--class-scores", str(classes), "--class-agnostic"), "exclude each other"),
        # A classifier of other classes than the ground truth's, in either mode.
        (("amnet.cli.evaluate", "--gt", str(ann), "--subset", "test", "--pred",
          str(agnostic_run["raw"]), "--class-scores", str(other)), "are not among its 5 classes"),
        (("amnet.cli.evaluate", "--ckpt", str(ckpt), "--data", str(models["data"]),
          "--class-scores", str(other), "--out", str(out)), "are not among its 5 classes"),
        (("amnet.cli.evaluate", "--gt", str(ann), "--subset", "test", "--pred",
          str(agnostic_run["raw"])), "add --class-scores SCORES.json or --class-agnostic"),
        # Results of a multi-class model: their labels would be dropped and replaced.
        (("amnet.cli.evaluate", "--gt", str(ann), "--subset", "test", "--pred", str(multi),
          "--class-scores", str(classes)), "go with the results of a class-agnostic model"),
    ]  # fmt: skip
    for args, message in cases:
        proc = run_main(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not out.exists()


def test_activitynet_file_names_and_ids_with_the_v_prefix(models, tmp_path):
    """ActivityNet's features are often ``v_<id>.npy`` for annotation ids ``<id>``:
    ``dataset.file_prefix`` finds them, and file-mode evaluation matches results keyed by
    either form."""
    import shutil

    from amnet.config import load_config
    from amnet.data import make_dataset

    data = tmp_path / "data"
    (data / "features").mkdir(parents=True)
    shutil.copy(models["data"] / "annotations.json", data / "annotations.json")
    for f in (models["data"] / "features").glob("*.npy"):
        shutil.copy(f, data / "features" / f"v_{f.name}")
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml")
    with pytest.raises(AMNetError, match="feature file"):
        make_dataset(cfg, data, "val_split", False)
    cfg["dataset"]["file_prefix"] = "v_"
    dataset = make_dataset(cfg, data, "val_split", False)
    assert dataset.feature_path(dataset.videos[0].video_id).name.startswith("v_")
    assert dataset[0]["feats"].shape[1] == 2048

    ann = data / "annotations.json"
    plain = tmp_path / "plain.json"
    proc = run_main("amnet.cli.evaluate", "--ckpt", str(models["pt"]), "--data",
                    str(models["data"]), "--subset", "test", "--out", str(plain), "--json")  # fmt: skip
    want = mean_ap(proc)
    results = json.loads(plain.read_text())
    results["results"] = {f"v_{k}": v for k, v in results["results"].items()}
    prefixed = write(tmp_path / "prefixed.json", results)
    got = run_main("amnet.cli.evaluate", "--gt", str(ann), "--subset", "test", "--pred",
                   str(prefixed), "--json")  # fmt: skip
    assert mean_ap(got) == want
