"""Run a command's ``main(argv)`` in this process, as a user's shell would see it: exit status,
stdout and stderr (the tools print their one-line errors to stderr). In-process, so a test does
not pay for a fresh interpreter and a torch import per call."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator


def run_main(main: Callable[[list[str]], int] | str, *args: str) -> subprocess.CompletedProcess:
    """``main``: the function, or a module path such as ``"amnet.cli.train"``."""
    if isinstance(main, str):
        main = importlib.import_module(main).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own exits (e.g. --help)
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), int(code or 0), out.getvalue(), err.getvalue())


def interrupt_training_in_epoch(monkeypatch, epoch: int) -> None:
    """Make training stop as Ctrl-C stops it, at the start of epoch ``epoch`` (0-based), until
    ``monkeypatch.undo()``: a run killed after its checkpoint of the epoch before."""
    import amnet.train

    real_epoch = amnet.train.train_one_epoch

    def interrupted(run, current, progress):
        if current == epoch:
            raise KeyboardInterrupt
        return real_epoch(run, current, progress)

    monkeypatch.setattr(amnet.train, "train_one_epoch", interrupted)


# Takes an amnet lock file (argv[1]) and holds it until killed, as a running command does.
_HOLD_LOCK = """
import sys, time
from amnet.fileio import exclusive_lock
held = exclusive_lock(sys.argv[1], "busy")
held.__enter__()
print("held", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def lock_held_elsewhere(path: str | os.PathLike) -> Iterator[int]:
    """Another process holds the lock file ``path`` while the block runs (its pid is yielded);
    it is then killed with SIGKILL, as a crashed command would be, leaving the file behind."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, os.fspath(path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
