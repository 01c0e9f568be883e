"""``amnet-train``: train AMNet from a config on a dataset folder."""

from __future__ import annotations

import argparse
import json
import logging

from amnet.cli.common import OneLineParser, run_cli, setup_logging

log = logging.getLogger("amnet.train")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="amnet-train", description="Train AMNet on pre-extracted video features."
    )
    p.add_argument("--config", required=True, help="YAML config (e.g. configs/thumos14_i3d.yaml)")
    p.add_argument(
        "--data",
        help="dataset folder: annotations.json + features/ (overrides relative config paths)",
    )
    p.add_argument("--out", required=True, help="run folder for last.pt, best.pt and train.log")
    p.add_argument(
        "--epochs", type=int, help="override opt.epochs (0 writes an initialised checkpoint)"
    )
    p.add_argument(
        "--seed", type=int, help="random seed (default: 0; a resumed run keeps its checkpoint's)"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--resume",
        help="continue from a last.pt of the same run; 'auto': OUT/last.pt if there is one, "
        "else start (a job that may be stopped and started again)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in an --out folder that already holds a run (its checkpoints are replaced)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    # Imported here, inside the error boundary: without the 'train' extra this is one line.
    from amnet.config import load_config
    from amnet.train import train

    cfg = load_config(args.config)
    summary = train(
        cfg,
        args.data,
        args.out,
        args.epochs,
        args.seed,
        args.device,
        args.resume,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(
        json.dumps(
            {
                "out_dir": summary["out_dir"],
                "best_average_mAP": summary["best_map"],
                "epochs": len(summary["history"]),
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv, "amnet-train")


if __name__ == "__main__":
    raise SystemExit(main())
