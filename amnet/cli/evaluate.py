"""``amnet-eval``: ActivityNet detection mAP of a results file against an annotation file.

File mode::

    amnet-eval --gt ANNOTATIONS.json --subset test --pred RESULTS.json [--tiou 0.3:0.7:0.1] [--json]

prints a table of mAP per tIoU threshold; with ``--json`` the last line of stdout is the result
as one JSON object. File mode needs numpy only (it must not import torch), so anything that
needs the model is imported inside its own code path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from amnet.annotations import build_label_map, load_annotations, select_subset
from amnet.cli.common import run_cli, setup_logging
from amnet.errors import AMNetError
from amnet.metrics import EvaluationResult, evaluate_detection, format_table, parse_tiou
from amnet.results import read_results

PROG = "amnet-eval"
DEFAULT_TIOU = "0.3:0.7:0.1"

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="ActivityNet detection mAP of a results JSON against an annotation file.",
    )
    files = parser.add_argument_group("file mode")
    # Not argparse-required: other modes of this command do without them.
    files.add_argument("--gt", metavar="ANNOTATIONS.json", help="ground-truth annotation file")
    files.add_argument("--pred", metavar="RESULTS.json", help="ActivityNet results file")
    parser.add_argument(
        "--subset", help="annotation subset to evaluate, e.g. test (case-insensitive)"
    )
    parser.add_argument(
        "--tiou",
        default=DEFAULT_TIOU,
        help=f"tIoU thresholds, start:stop:step or a comma list (default: {DEFAULT_TIOU})",
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
) -> tuple[EvaluationResult, list[str]]:
    """Evaluate a results file against one subset of an annotation file.

    Class names come from every video of the annotation file (not only the subset), so label
    ids agree with those of training. Returns the result and the class names.
    """
    thresholds = parse_tiou(tiou) if isinstance(tiou, str) else tiou
    videos = load_annotations(gt_path)
    class_names = build_label_map(videos.values(), gt_path)
    ground_truth = select_subset(videos, subset, gt_path)
    predictions = read_results(pred_path, class_names)
    log.info(
        "%d ground-truth videos (subset %s), %d predicted videos, %d classes",
        len(ground_truth),
        subset,
        len(predictions),
        len(class_names),
    )
    try:
        result = evaluate_detection(ground_truth, predictions, class_names, thresholds)
    except AMNetError as exc:
        raise AMNetError(f"{gt_path} / {pred_path}: {exc}") from None
    return result, class_names


def report(result: EvaluationResult, as_json: bool = False) -> None:
    """Print the table; with ``as_json`` the JSON object follows as the last stdout line."""
    print(format_table(result))
    if as_json:
        print(json.dumps(result.to_json()))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # Quiet by default: stderr carries warnings and the one-line error only.
    setup_logging(verbose=args.verbose, quiet=not args.verbose)
    if args.gt is None or args.pred is None or args.subset is None:
        raise AMNetError(
            "file mode needs --gt ANNOTATIONS.json, --subset SUBSET and --pred RESULTS.json"
        )
    result, _ = evaluate_files(args.gt, args.subset, args.pred, args.tiou)
    report(result, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, PROG)


if __name__ == "__main__":
    raise SystemExit(main())
