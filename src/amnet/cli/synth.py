"""``amnet-synth``: write a synthetic THUMOS14-shaped dataset (annotations + I3D-like features).

::

    amnet-synth --out DIR [--preset thumos14|tiny] [--videos N] [--seed S] [--dim C] [--difficulty X]
    amnet-synth --out DIR --layout ANNOTATIONS.json|thumos14 [--subset test] [--videos N [--spread]] ...

writes ``DIR/annotations.json`` (ActionFormer format, fps 30, with label ids) and
``DIR/features/<video_id>.npy`` (float32 ``[T, C]``, ``T = round(duration * 30 / 4)``).
With ``--layout`` the videos, durations and actions of a real annotation file are kept; without
it they are drawn from a preset (see :mod:`amnet.synth`).
"""

from __future__ import annotations

import argparse
import math
import sys

from amnet import synth
from amnet.cli.common import OneLineParser, run_cli, setup_logging
from amnet.errors import AMNetError

PROG = "amnet-synth"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Write a synthetic THUMOS14-shaped dataset: annotations.json + features/*.npy.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    parser.add_argument(
        "--layout",
        metavar="ANNOTATIONS.json",
        help="copy videos, durations and actions from this annotation file instead of a preset; "
        "'thumos14' names the THUMOS14 layout shipped with the package",
    )
    parser.add_argument(
        "--spread",
        action="store_true",
        help="with --layout and --videos N: N evenly spaced videos of each subset instead of "
        "the first N",
    )
    parser.add_argument(
        "--subset",
        action="append",
        metavar="SUBSET",
        help="subset(s) to generate, case-insensitive; repeat or comma-separate (default: all)",
    )
    parser.add_argument(
        "--preset",
        help=f"layout preset when there is no --layout: {' or '.join(synth.PRESETS)} "
        "(default: thumos14)",
    )
    parser.add_argument(
        "--videos",
        type=int,
        metavar="N",
        help="videos per split for a preset; the first N (by id) of a --layout",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--dim",
        type=int,
        default=synth.DEFAULT_DIM,
        help=f"feature channels, first half RGB, second half flow (default: {synth.DEFAULT_DIM})",
    )
    parser.add_argument(
        "--difficulty",
        type=float,
        default=1.0,
        help="0 = easy, 1 = default, larger = weaker signal and stronger confusable context",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out folder that is not empty (its annotations.json is replaced)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    return parser


def _subsets(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise AMNetError("--subset needs a subset name")
    return names


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    # Every check comes before the first write, so bad input leaves no folder behind.
    if args.videos is not None and args.videos < 1:
        raise AMNetError(f"--videos must be at least 1, got {args.videos}")
    if args.dim < 1:
        raise AMNetError(f"--dim must be at least 1, got {args.dim}")
    if args.seed < 0:
        raise AMNetError(f"--seed must be >= 0, got {args.seed}")
    if not math.isfinite(args.difficulty) or args.difficulty < 0:
        raise AMNetError(f"--difficulty must be a finite number >= 0, got {args.difficulty}")
    subsets = _subsets(args.subset)
    out = synth.prepare_output(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise AMNetError(
            f"{out}: folder is not empty (a dataset may live there); pass --overwrite to write "
            "into it anyway, or choose a new folder"
        )

    if args.spread and (args.layout is None or args.videos is None):
        raise AMNetError("--spread needs --layout and --videos")
    if args.layout is not None:
        if args.preset is not None:
            raise AMNetError("give either --layout or --preset, not both")
        from amnet.layouts import layout_path

        if layout_path(args.layout).resolve().is_relative_to(out.resolve()):
            # --overwrite replaces what is in --out: the layout would go with it.
            raise AMNetError(
                f"{args.layout}: the layout is inside --out {out}, which this command writes; "
                "give another --out (or a copy of the layout from elsewhere)"
            )
        videos, class_names = synth.layout_from_file(
            args.layout, subsets, args.videos, spread=args.spread
        )
        source = f"layout {args.layout}"
    else:
        preset = args.preset or "thumos14"
        class_names = synth.preset_class_names(preset)
        videos = synth.draw_layout(preset, args.videos, args.seed, subsets)
        source = f"preset {preset}"
    version = (
        f"amnet-synth {source}, seed {args.seed}, dim {args.dim}, difficulty {args.difficulty:g}"
    )
    synth.write_dataset(
        args.out,
        videos,
        class_names,
        seed=args.seed,
        dim=args.dim,
        difficulty=args.difficulty,
        version=version,
        progress=not args.quiet,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
