"""Whether to show progress: bars and INFO lines go to a terminal, never to pipes or log files."""

from __future__ import annotations

import sys


def interactive() -> bool:
    """Whether stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def bar_disabled(progress: bool = True) -> bool:
    """The ``disable`` argument of a tqdm bar: off unless asked for and stderr is a terminal."""
    return not (progress and interactive())
