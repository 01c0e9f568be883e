"""Test set-up. The Triton interpreter must be switched on before triton is first imported,
so that the kernels run on this CPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
