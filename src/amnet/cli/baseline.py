"""``amnet-baseline``: the prior-only baseline (no features) on a dataset folder.

::

    amnet-baseline --data DIR [--train-subset validation] --subset test --out RESULTS.json

reads ``DIR/annotations.json`` (as written by ``amnet-synth``), tiles every video of
``--subset`` with proposals of the training split's median action length, labels each with
every training class scored by its frequency, and writes an ActivityNet results JSON that
``amnet-eval`` scores.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from amnet.baseline import dataset_annotations, run_baseline
from amnet.cli.common import OneLineParser, run_cli, setup_logging
from amnet.fileio import check_out_path
from amnet.results import write_results

PROG = "amnet-baseline"

logger = logging.getLogger(__name__)


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="Prior-only baseline (median-length tiles x class frequency), no features.",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="dataset folder")
    parser.add_argument(
        "--train-subset",
        default="validation",
        help="subset the statistics come from (default: validation)",
    )
    parser.add_argument("--subset", required=True, help="subset to predict, e.g. test")
    parser.add_argument("--out", required=True, metavar="RESULTS.json", help="results file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    return parser


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    annotations = dataset_annotations(args.data)
    features = Path(args.data) / "features"
    inputs = [annotations, *(features.glob("*.npy") if features.is_dir() else ())]
    check_out_path(args.out, inputs, text=True)
    detections, class_names, _ = run_baseline(annotations, args.subset, args.train_subset)
    write_results(args.out, detections, class_names, version="amnet-baseline prior")
    logger.info(
        "wrote %d detections for %d videos to %s",
        sum(len(d) for d in detections.values()),
        len(detections),
        args.out,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
