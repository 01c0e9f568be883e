"""What every console script shares: logging set-up and the error boundary."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from amnet.console import interactive
from amnet.errors import AMNetError

EXIT_USER_ERROR = 2

# Optional dependencies -> the extra that installs them (``pip install 'amnet[EXTRA]'``).
EXTRA_OF_MODULE = {
    "torch": "train",
    "yaml": "train",
    "onnx": "train",
    "onnxscript": "train",
    "triton": "triton",
    "tensorrt": "gpu",
    "matplotlib": "viz",
    "ray": "scale",
    "onnxruntime": "onnxruntime",
}


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """WARNING and above by default off a terminal, INFO on one; ``-v`` DEBUG, ``-q`` WARNING."""
    if verbose:
        level = logging.DEBUG
    elif quiet or not interactive():
        level = logging.WARNING
    else:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    # The handler's own level keeps stderr quiet even when a file log (train.log) lowers the
    # package logger's level to record INFO lines.
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("amnet").setLevel(level)


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install when ``exc`` is an optional dependency."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    if extra == "onnxruntime":
        return "this needs ONNX Runtime: pip install onnxruntime (or onnxruntime-gpu)"
    return f"this needs the '{extra}' extra ({top} is not installed): pip install 'amnet[{extra}]'"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, ``kill``, a container stopping), raised where the command is, so
    that its clean-up runs as for Ctrl-C: temporary files go, finished work stays."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only: Python runs signal
    handlers there); the handler before is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class ClosedStream:
    """Stands in for a standard stream the command was started without: using it is one line
    (``stdout is closed``), not an AttributeError on None; asking whether it is a terminal, or
    flushing it, is harmless."""

    def __init__(self, name: str, how: str) -> None:
        self._name, self._how = name, how

    def isatty(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def __getattr__(self, attr: str) -> Any:
        raise AMNetError(
            f"{self._name} is closed (the command was started with {self._how}); give it one "
            "(a file or a pipe)"
        )


def run_cli(fn: Callable[[list[str] | None], int | None], argv: list[str] | None, prog: str) -> int:
    """Run ``fn``; a user error prints ``prog: error: ...`` on one line and exits 2. Ctrl-C exits
    130 and SIGTERM 143, each with one line, after the command's clean-up."""
    # A command started with a standard stream closed (``>&-``, ``<&-``) has None there.
    if sys.stdout is None:
        sys.stdout = ClosedStream("stdout", ">&-")
    if sys.stdin is None:
        sys.stdin = ClosedStream("stdin", "<&-")
    try:
        with sigterm_as_interrupt():
            return int(fn(argv) or 0)
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except AMNetError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. piped into `head`): not an error of ours, and no traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as exc:
        detail = allocation_failure(exc)
        if detail is None:
            return _internal_error(exc, prog)
        print(f"{prog}: error: out of memory ({detail})", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        # The environment said no (read-only file system, disk full, permissions, a name that
        # is a folder): one line naming the file. The atomic writers leave nothing behind.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValueError as exc:
        # numpy's refusal of a size beyond the address space is a ValueError.
        if not any(s in str(exc) for s in ("array is too big", "Maximum allowed size exceeded")):
            return _internal_error(exc, prog)
        print(f"{prog}: error: out of memory ({str(exc)[:200]})", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:
        return _internal_error(exc, prog)


def allocation_failure(exc: BaseException) -> str | None:
    """The allocator's words when ``exc`` is a failed allocation that PyTorch raised: its
    ``OutOfMemoryError`` (CUDA) or the CPU allocator refusing a size; else None."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if type(exc).__name__ == "OutOfMemoryError":
        return text[:200]
    cpu = text.find("DefaultCPUAllocator:")
    return text[cpu:][:200] if cpu >= 0 else None


def _internal_error(exc: BaseException, prog: str) -> int:
    # A bug of ours. The user still gets one line; AMNET_DEBUG=1 shows the traceback.
    if os.environ.get("AMNET_DEBUG"):
        raise exc
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    print(
        f"{prog}: error: internal error ({type(exc).__name__}: {first}); "
        "AMNET_DEBUG=1 shows the traceback",
        file=sys.stderr,
    )
    return EXIT_USER_ERROR


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``prog: error: ...``) and exit 2, like every
    other error of the command-line tools (argparse would print the usage first), and which
    answers ``--version``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from amnet import __version__

        self.add_argument(
            "--version", action="version", version=f"%(prog)s {__version__}",
            help="print the version and exit",
        )  # fmt: skip

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")
