"""The CPUs this process may use, and thread or process counts cut to them."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or a job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def fit_to_cpus(name: str, count: int) -> int:
    """Threads or processes beyond the usable CPUs only compete for them, and a slip such as
    100000 would exhaust the machine (PyTorch crashes outright): cut, with a warning."""
    cpus = usable_cpus()
    if count > cpus:
        logger.warning(
            "%s %d is more than the %d CPUs this process may use; using %d",
            name, count, cpus, cpus,
        )  # fmt: skip
        return cpus
    return count
