"""``amnet-eval``: ActivityNet detection mAP of a results file against an annotation file.

File mode::

    amnet-eval --gt ANNOTATIONS.json --subset test --pred RESULTS.json [--tiou 0.3:0.7:0.1] [--json]

prints a table of mAP per tIoU threshold; with ``--json`` the last line of stdout is the result
as one JSON object. File mode needs numpy only (it must not import torch), so anything that
needs the model is imported inside its own code path.

Model mode::

    amnet-eval --ckpt CKPT --data DIR [--subset test] [--out RESULTS.json] [--json]

runs a checkpoint over a split (videos longer than max_seq_len in overlapping chunks, merged by
the shared post-processing), writes ActivityNet results JSON and prints the same table.

Class-agnostic models (``dataset.num_classes: 1``, the ActivityNet protocol): ``--class-scores
SCORES.json [--class-topk 2]`` fuses their detections with a video-level classifier's classes
in either mode (:mod:`amnet.class_scores`); without it a one-class checkpoint is scored
class-agnostically, and ``--class-agnostic`` does the same for a results file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np

from amnet.annotations import (
    VideoAnnotation,
    build_label_map,
    load_annotations,
    prefix_twin,
    select_subset,
)
from amnet.class_scores import (
    AGNOSTIC_CLASS,
    DEFAULT_TOPK,
    agnostic_ground_truth,
    fuse_results,
    read_class_scores,
)
from amnet.cli.common import OneLineParser, run_cli, setup_logging
from amnet.detections import Detections
from amnet.errors import AMNetError
from amnet.metrics import EvaluationResult, evaluate_detection, format_table, parse_tiou
from amnet.results import read_results

PROG = "amnet-eval"
DEFAULT_TIOU = "0.3:0.7:0.1"

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="ActivityNet detection mAP of a results JSON against an annotation file.",
    )
    files = parser.add_argument_group("file mode")
    # Not argparse-required: other modes of this command do without them.
    files.add_argument("--gt", metavar="ANNOTATIONS.json", help="ground-truth annotation file")
    files.add_argument("--pred", metavar="RESULTS.json", help="ActivityNet results file")
    model = parser.add_argument_group("model mode")
    model.add_argument("--ckpt", help="AMNet checkpoint (last.pt / best.pt)")
    model.add_argument("--data", help="dataset folder: annotations.json + features/")
    model.add_argument("--out", metavar="RESULTS.json", help="write the detections here")
    model.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu")
    model.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the EMA (--ema) or raw (--no-ema) weights (default: the set the checkpoint's "
        "validation chose)",
    )
    parser.add_argument(
        "--subset",
        help="annotation subset to evaluate, e.g. test (case-insensitive; model mode defaults "
        "to the config's val_split)",
    )
    parser.add_argument(
        "--tiou",
        default=None,
        help=f"tIoU thresholds, start:stop:step or a comma list (default: {DEFAULT_TIOU}; "
        "model mode: the config's test_cfg.tiou_thresholds)",
    )
    fusion = parser.add_argument_group("class-agnostic models (the ActivityNet protocol)")
    fusion.add_argument(
        "--class-scores",
        metavar="SCORES.json",
        help="video-level class probabilities, {'results': {video_id: [p...]}, 'class': "
        "[names]}: each class-agnostic detection is repeated for the video's --class-topk "
        "classes, scored sqrt(score * p)",
    )
    fusion.add_argument(
        "--class-topk",
        type=int,
        metavar="K",
        help=f"classes per video with --class-scores (default: {DEFAULT_TOPK})",
    )
    fusion.add_argument(
        "--class-agnostic",
        action="store_true",
        help="file mode: score detections whatever their class, against every action as one "
        "class (a one-class model's checkpoint is always scored so without --class-scores)",
    )
    points = parser.add_argument_group("operating points (file mode)")
    points.add_argument(
        "--operating-points",
        metavar="OUT.json",
        help="also write a score threshold per class, chosen on these results (amnet-infer "
        "--class-thresholds applies them)",
    )
    points.add_argument(
        "--target-precision",
        type=float,
        metavar="P",
        help="the threshold with the most recall at precision >= P (default: the best F1)",
    )
    points.add_argument(
        "--operating-tiou",
        type=float,
        metavar="T",
        help="tIoU at which a detection counts as correct for the thresholds (default: 0.5)",
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the result as JSON on the last line"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return parser


def evaluate_files(
    gt_path: str | os.PathLike,
    subset: str,
    pred_path: str | os.PathLike,
    tiou: str | Sequence[float] | np.ndarray = DEFAULT_TIOU,
    class_scores: str | os.PathLike | None = None,
    topk: int = DEFAULT_TOPK,
    agnostic: bool = False,
) -> tuple[EvaluationResult, list[str]]:
    """Evaluate a results file against one subset of an annotation file.

    Class names come from every video of the annotation file (not only the subset), so label
    ids agree with those of training. With ``class_scores`` (a classifier file) the results'
    detections are read class-agnostically and fused with the video-level classes first; with
    ``agnostic`` every action and detection counts as one class. Returns the result and the
    class names.
    """
    thresholds = parse_tiou(tiou) if isinstance(tiou, str) else tiou
    ground_truth, predictions, class_names = read_evaluation_files(
        gt_path, subset, pred_path, class_scores, topk, agnostic
    )
    try:
        result = evaluate_detection(ground_truth, predictions, class_names, thresholds)
    except AMNetError as exc:
        raise AMNetError(f"{gt_path} / {pred_path}: {exc}") from None
    return result, class_names


def read_evaluation_files(
    gt_path: str | os.PathLike,
    subset: str,
    pred_path: str | os.PathLike,
    class_scores: str | os.PathLike | None = None,
    topk: int = DEFAULT_TOPK,
    agnostic: bool = False,
) -> tuple[dict[str, VideoAnnotation], dict[str, Detections], list[str]]:
    """The ground truth of ``subset``, the predictions matched to its video ids and the class
    names that the predictions' labels index, as :func:`evaluate_files` scores them."""
    if class_scores is not None and agnostic:
        raise AMNetError("--class-scores and --class-agnostic exclude each other")
    videos = load_annotations(gt_path)
    class_names = build_label_map(videos.values(), gt_path)
    ground_truth = select_subset(videos, subset, gt_path)
    if class_scores is not None:
        scores = read_class_scores(class_scores, class_names)
        scores.check_classes(ground_truth.values())
        localized = read_results(pred_path, [], agnostic=True, one_class=True)
        predictions = fuse_results(localized, scores, topk)
        class_names = scores.names
    elif agnostic:
        predictions = read_results(pred_path, [], agnostic=True)
        ground_truth = agnostic_ground_truth(ground_truth.values())
        class_names = [AGNOSTIC_CLASS]
    else:
        try:
            predictions = read_results(pred_path, class_names)
        except AMNetError as exc:
            if f"label {AGNOSTIC_CLASS!r} is not one of" not in str(exc):
                raise
            raise AMNetError(
                f"{exc}; results of a class-agnostic model: add --class-scores SCORES.json or "
                "--class-agnostic"
            ) from None
    predictions = match_video_ids(predictions, ground_truth)
    log.info(
        "%d ground-truth videos (subset %s), %d predicted videos, %d classes",
        len(ground_truth),
        subset,
        len(predictions),
        len(class_names),
    )
    return dict(ground_truth), predictions, list(class_names)


def match_video_ids(
    predictions: dict[str, Detections], ground_truth: Mapping[str, object]
) -> dict[str, Detections]:
    """Predictions keyed by the ground truth's ids where they differ only by ActivityNet's
    ``v_`` prefix (feature files are often named ``v_<id>.npy``, annotations ``<id>``)."""
    out: dict[str, Detections] = {}
    renamed = 0
    for vid, dets in predictions.items():
        if vid not in ground_truth:
            other = prefix_twin(vid)
            if other in ground_truth and other not in predictions:
                vid, renamed = other, renamed + 1
        out[vid] = dets
    if renamed:
        log.info("%d predicted video ids matched the ground truth by their 'v_' prefix", renamed)
    return out


def report(result: EvaluationResult, as_json: bool = False) -> None:
    """Print the table; with ``as_json`` the JSON object follows as the last stdout line."""
    print(format_table(result))
    if as_json:
        print(json.dumps(result.to_json()))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # Quiet by default: stderr carries warnings and the one-line error only.
    setup_logging(verbose=args.verbose, quiet=not args.verbose)
    # Options a mode has no use for are refused: ignoring one would hide a mistake.
    if args.class_topk is not None and args.class_scores is None:
        raise AMNetError("--class-topk goes with --class-scores")
    if args.class_topk is None:
        args.class_topk = DEFAULT_TOPK
    if args.operating_points is None:
        for flag, value in (("--target-precision", args.target_precision),
                            ("--operating-tiou", args.operating_tiou)):  # fmt: skip
            if value is not None and args.ckpt is None:
                raise AMNetError(f"{flag} goes with --operating-points")
    if args.ckpt is not None:
        return _model_mode(args)
    for flag, value in (("--data", args.data), ("--out", args.out), ("--device", args.device),
                        ("--ema/--no-ema", args.ema)):  # fmt: skip
        if value is not None:
            raise AMNetError(
                f"{flag} is for model mode (--ckpt CKPT --data DIR); file mode scores the "
                "--pred file against --gt"
            )
    if args.gt is None or args.pred is None or args.subset is None:
        raise AMNetError(
            "file mode needs --gt ANNOTATIONS.json, --subset SUBSET and --pred RESULTS.json"
        )
    if args.operating_points is None:
        result, _ = evaluate_files(
            args.gt, args.subset, args.pred, args.tiou or DEFAULT_TIOU,
            args.class_scores, args.class_topk, args.class_agnostic,
        )  # fmt: skip
        report(result, args.json)
        return 0
    return _file_mode_with_operating_points(args)


def _file_mode_with_operating_points(args: argparse.Namespace) -> int:
    from amnet.fileio import check_out_path
    from amnet.metrics import operating_points
    from amnet.thresholds import write_operating_points

    target = args.target_precision
    if target is not None and not 0 < target <= 1:
        raise AMNetError(f"--target-precision must be in (0, 1], got {target}")
    if args.operating_tiou is None:
        args.operating_tiou = 0.5
    if not 0 < args.operating_tiou <= 1:
        raise AMNetError(f"--operating-tiou must be in (0, 1], got {args.operating_tiou}")
    inputs = [args.gt, args.pred] + ([args.class_scores] if args.class_scores else [])
    check_out_path(args.operating_points, inputs, text=True)
    thresholds = parse_tiou(args.tiou or DEFAULT_TIOU)
    ground_truth, predictions, class_names = read_evaluation_files(
        args.gt, args.subset, args.pred, args.class_scores, args.class_topk, args.class_agnostic
    )
    try:
        result = evaluate_detection(ground_truth, predictions, class_names, thresholds)
        points = operating_points(
            ground_truth, predictions, class_names, args.operating_tiou, target
        )
    except AMNetError as exc:
        raise AMNetError(f"{args.gt} / {args.pred}: {exc}") from None
    write_operating_points(args.operating_points, points, args.operating_tiou, target)
    if not args.json:
        aim = "best F1" if target is None else f"precision >= {target:g}"
        print(f"operating points ({aim} at tIoU {args.operating_tiou:g}) -> "
              f"{args.operating_points}")  # fmt: skip
        print(f"{'class':<24} {'threshold':>9} {'precision':>9} {'recall':>7} {'kept':>6}")
        for name, p in points.items():
            cut = "none" if p.threshold is None else f"{p.threshold:.4f}"
            print(f"{name[:24]:<24} {cut:>9} {p.precision:>9.3f} {p.recall:>7.3f} "
                  f"{p.detections:>6}")  # fmt: skip
        print()
    report(result, args.json)
    return 0


def _model_mode(args: argparse.Namespace) -> int:
    if args.data is None:
        raise AMNetError("model mode needs --data DIR (annotations.json + features/)")
    if args.gt is not None or args.pred is not None:
        raise AMNetError("--ckpt cannot be combined with --gt/--pred (file mode)")
    if any(v is not None for v in (args.operating_points, args.target_precision,
                                   args.operating_tiou)):  # fmt: skip
        raise AMNetError(
            "--operating-points is for file mode: write the results with --out, then "
            "amnet-eval --gt ... --pred RESULTS.json --operating-points OUT.json"
        )
    if args.class_agnostic:
        raise AMNetError(
            "--class-agnostic is for file mode; a one-class model's checkpoint is scored "
            "class-agnostically by itself"
        )
    import torch

    from amnet.checkpoint import load_model
    from amnet.data import make_dataset
    from amnet.evaluation import evaluate_model
    from amnet.fileio import check_out_path
    from amnet.results import write_results

    args.device = args.device or "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise AMNetError("--device cuda asked for, but no CUDA device is available")
    model, cfg, class_names = load_model(args.ckpt, use_ema=args.ema)
    if args.subset is not None:
        cfg["dataset"]["val_split"] = [args.subset]
    if args.tiou is not None:
        cfg["test_cfg"]["tiou_thresholds"] = parse_tiou(args.tiou).tolist()
    dataset = make_dataset(cfg, args.data, "val_split", training=False, class_names=class_names)
    scores = None
    if args.class_scores is not None:
        every = load_annotations(dataset.annotation_file)
        scores = read_class_scores(
            args.class_scores, build_label_map(every.values(), dataset.annotation_file)
        )
    if args.out is not None:
        # Before inference, and never onto an input (annotations, features, the checkpoint).
        inputs = [dataset.annotation_file, args.ckpt]
        inputs += [args.class_scores] if args.class_scores is not None else []
        inputs += [dataset.feature_path(v.video_id) for v in dataset.videos]
        check_out_path(args.out, inputs, text=True)
    model = model.to(args.device)
    detections, result = evaluate_model(
        model, dataset, cfg, torch.device(args.device), progress=not args.json,
        class_scores=scores, topk=args.class_topk,
    )  # fmt: skip
    if args.out is not None:
        write_results(args.out, detections, scores.names if scores else class_names)
    report(result, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
