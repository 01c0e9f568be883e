"""``python export/to_tensorrt.py ...``: the same as ``amnet-export tensorrt ...``, from any
directory.

The engine builder itself is :mod:`amnet.export.to_tensorrt` (src/amnet/export/to_tensorrt.py).
"""

import sys

from amnet.export.to_tensorrt import main

if __name__ == "__main__":
    sys.exit(main())
