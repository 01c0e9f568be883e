"""Feature arrays for the runtime tests: what the tiny trained model of conftest can detect."""

from __future__ import annotations

import numpy as np

DIM = 2048


def video(length: int, seed: int = 0) -> np.ndarray:
    """Non-negative, temporally smooth features with a bump every ~60 snippets."""
    rng = np.random.default_rng(seed)
    base = np.abs(rng.normal(0.0, 0.2, (length, DIM))).astype(np.float32)
    for start in rng.integers(0, max(length - 20, 1), size=max(length // 60, 1)):
        base[start : start + 15, : DIM // 8] += 0.6
    return base
