"""Annotation layouts shipped with the package (``--layout thumos14``).

``thumos14`` is the THUMOS14 temporal annotation file in ActionFormer format (30 fps; 200
``validation`` videos, the field's training split, and 212 ``test`` videos): the layout of
THUMOS14-shaped synthetic data and of the benchmarks. Reading it needs no torch.
"""

from __future__ import annotations

import os
from pathlib import Path

LAYOUT_DIR = Path(__file__).resolve().parent / "data"
BUILTIN_LAYOUTS = ("thumos14",)


def layout_path(name_or_path: str | os.PathLike) -> Path:
    """The file of a built-in layout name, or ``name_or_path`` itself as a path.

    A file that exists wins over a built-in name, so a user's ``./thumos14`` is never shadowed.
    """
    path = Path(name_or_path)
    if str(name_or_path) in BUILTIN_LAYOUTS and not path.exists():
        return LAYOUT_DIR / f"{name_or_path}.layout.json"
    return path
