"""``python export/to_onnx.py ...``: the same as ``amnet-export onnx ...``, from any directory.

The exporter itself is :mod:`amnet.export.to_onnx` (src/amnet/export/to_onnx.py).
"""

import sys

from amnet.export.to_onnx import main

if __name__ == "__main__":
    sys.exit(main())
