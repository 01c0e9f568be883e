"""``amnet-export``: the export tools as one console command.

::

    amnet-export onnx --ckpt RUN/best.pt [--out model.onnx] [--opset 17] [--int8] [--ema|--no-ema]
    amnet-export tensorrt --onnx model.onnx --out model.plan [--fp16] [--max-len N] [--max-batch N]

The same as ``python export/to_onnx.py`` and ``python export/to_tensorrt.py`` (which keep
working from any directory).
"""

from __future__ import annotations

import importlib
import sys

PROG = "amnet-export"
TARGETS = ("onnx", "tensorrt")
USAGE = f"usage: {PROG} {{onnx,tensorrt}} ARGS... (see {PROG} onnx --help)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() if argv else USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from amnet import __version__

        print(f"{PROG} {__version__}")
        return 0
    target, rest = argv[0], argv[1:]
    if target not in TARGETS:
        print(f"{PROG}: error: unknown target {target!r}; choose onnx or tensorrt", file=sys.stderr)
        return 2
    try:
        tool = importlib.import_module(f"amnet.export.to_{target}")
    except ModuleNotFoundError as exc:
        from amnet.cli.common import missing_extra_message

        message = missing_extra_message(exc)
        if message is None:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    return tool.main(rest, prog=f"{PROG} {target}")


if __name__ == "__main__":
    sys.exit(main())
