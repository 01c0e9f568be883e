"""Atomic file writes and safe array loading shared by every command that touches disk."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import mmap as mmap_module
import os
import shutil
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from amnet.errors import AMNetError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


def _refuse_special(path: Path) -> None:
    """An atomic rename replaces what is at ``path``: never let it be a device, FIFO, socket or
    a link to one (``-o /dev/null`` must not swap /dev/null for a regular file)."""
    try:
        info = os.stat(path)  # follows a symlink: what it points at decides
    except (FileNotFoundError, NotADirectoryError):  # nothing there: callers check the folder
        return
    except OSError as exc:
        raise AMNetError(f"{path}: cannot check the output path ({exc.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AMNetError(f"{path}: is a folder, expected an output file path")
    if not stat.S_ISREG(info.st_mode):
        raise AMNetError(f"{path}: exists and is not a regular file; refusing to replace it")


def refuse_special_input(path: str | os.PathLike) -> None:
    """Inputs must be regular files: opening a FIFO would block forever, a device or socket
    reads garbage. Missing files and folders are left to the caller's own message."""
    try:
        info = os.stat(path)
    except OSError:
        return
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise AMNetError(f"{path}: not a regular file (a FIFO, device or socket); refused")


# A temporary file of this age that was never published belongs to a writer that was killed.
STALE_TEMP_SECONDS = 3600.0


def _publish(tmp: str, path: Path) -> None:
    """Give the temporary file ordinary permissions (mkstemp makes it 0600), then rename it."""
    _refuse_special(path)
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
    remove_stale_temps(path)


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``.<name>.*.tmp``) that earlier writers of ``path`` left when
    they were killed before publishing; only regular files untouched for
    :data:`STALE_TEMP_SECONDS`, so a writer still at work keeps its file. Their random names
    mean they never clash with a new write; this only keeps them from piling up."""
    path = Path(path)
    cutoff = time.time() - STALE_TEMP_SECONDS
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            info = tmp.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


# Suffixes of the files users keep (models, features, pictures, configs): a text output (results,
# operating points) is never written under one, so a slip such as ``-o run/best.pt`` cannot
# replace a checkpoint with JSON.
KEPT_SUFFIXES = (
    ".pt",
    ".pth",
    ".onnx",
    ".plan",
    ".engine",
    ".npy",
    ".npz",
    ".png",
    ".yaml",
    ".yml",
)


def check_out_path(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike] = (),
    *,
    probe: bool = True,
    suffixes: Sequence[str] = (),
    text: bool = False,
) -> Path:
    """Fail early (one line) when ``out`` cannot be an output file: a path ending in a separator
    (a folder), a folder, a device/FIFO/socket, a missing parent folder, or the same file as one
    of ``inputs`` (symlinks followed, same inode). ``suffixes``: the names a model output must
    end with (its suffix picks the backend that reads it); ``text``: a text output, which may
    not take the suffix of a file users keep (:data:`KEPT_SUFFIXES`)."""
    text_path = os.fspath(out)
    if text_path == "-":  # commands that write to stdout take "-" before they get here
        raise AMNetError("-: this output is a file (stdout is not one of its choices); give a name")
    if text_path.endswith(("/", os.sep)):
        raise AMNetError(f"{text_path}: ends with '/', expected an output file path")
    out = Path(out)
    _refuse_special(out)
    if out.is_dir():
        raise AMNetError(f"{out}: is a folder, expected an output file path")
    parent = out.parent if str(out.parent) else Path(os.curdir)
    if not parent.is_dir():
        raise AMNetError(f"{out}: cannot write, folder {parent} does not exist")
    if probe:  # creating a file is the real test (a read-only mount stops root too)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
        except OSError as exc:
            raise AMNetError(f"{out}: cannot write ({exc.strerror or exc})") from None
        os.close(fd)
        os.unlink(tmp)
    if out.exists():
        for source in inputs:
            try:
                same = os.path.samefile(out, source)
            except OSError:
                continue
            if same:
                raise AMNetError(
                    f"{out}: is an input of this command ({source}); refusing to overwrite it"
                )
    suffix = out.suffix.lower()
    if suffixes and suffix not in suffixes:
        raise AMNetError(f"{out}: the output must be a {' or '.join(suffixes)} file")
    if text and suffix in KEPT_SUFFIXES:
        raise AMNetError(
            f"{out}: a {suffix} name is for a model, features, a picture or a config, not for "
            "this command's text output; choose a .json (or .jsonl, .csv) name"
        )
    return out


def temp_beside(out: str | os.PathLike) -> Path:
    """An empty temporary file next to ``out`` (same file system, so the final rename is atomic);
    creating it is the real test that the folder is writable (a read-only mount stops root too).
    Finish with :func:`publish`, or unlink it on failure."""
    out = check_out_path(out, probe=False)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise AMNetError(f"{out}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Rename a finished temporary file to ``out`` with ordinary permissions."""
    _publish(os.fspath(tmp), Path(out))
    return Path(out)


# The first line of every lock file: a file at a lock path without it is not ours to touch.
LOCK_MARK = "amnet lock"


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, busy: str) -> Iterator[None]:
    """Hold the lock file ``path`` for this process alone while the block runs; removed after.

    When another process holds it the block does not run: one AMNetError at once, ``busy``
    followed by the holder's pid. The lock is the kernel's (``flock``), so a holder that is
    killed, even with SIGKILL, releases it, and the file it leaves is taken over by the next
    run. A file at ``path`` that is not an amnet lock file is refused, never replaced. Where
    files cannot be locked (not POSIX, or a file system without locks) the block runs
    unlocked, with a warning for the latter."""
    path = Path(path)
    fd = _take_lock(path, busy)
    if fd is None:
        yield
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{LOCK_MARK} pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: the next run makes a fresh one
        os.close(fd)


def _take_lock(path: Path, busy: str) -> int | None:
    """The open, locked descriptor of the lock file at ``path`` (None: no locking here)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise AMNetError(f"{path}: cannot create the lock file ({exc.strerror})") from None
        try:
            head = os.pread(fd, 256, 0).decode("utf-8", "replace")
            if head and not head.startswith(LOCK_MARK):
                raise AMNetError(
                    f"{path}: exists and is not an amnet lock file; refusing to use it"
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = head.removeprefix(LOCK_MARK).split()
                raise AMNetError(busy + (f" (pid {holder[-1]})" if holder else "")) from None
            except OSError as exc:  # e.g. ENOLCK: a network file system without locks
                log.warning("%s: cannot lock (%s); going on without the lock", path, exc.strerror)
                os.close(fd)
                if not head:
                    path.unlink(missing_ok=True)
                return None
            # The last holder removes the file on release; if that happened between our open and
            # our flock, we hold a file no one else will see: start again on the one at the path.
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (
                opened.st_ino,
                opened.st_dev,
            ):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_output(path) as tmp:`` write ``tmp`` (a file beside ``path``); it becomes
    ``path`` when the block ends, and is removed if the block fails, so no half file is left."""
    tmp = temp_beside(out)
    try:
        yield tmp
        publish(tmp, out)
    except OSError as exc:
        error = write_failure(out, exc)
        tmp.unlink(missing_ok=True)
        raise error from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """``mkdir -p folder``; returns the folders it made, outermost first (to remove again)."""
    folder = Path(folder)
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise AMNetError(f"{made}: cannot create the folder ({exc.strerror})") from None
    return missing[::-1]


def check_out_folder(folder: str | os.PathLike, what: str) -> Path:
    """Fail early (one line) when ``folder`` cannot take output files: not a folder, or one
    that cannot be made or written to. Nothing is left behind: a folder made for the check is
    removed again, and made when the first file is staged (:class:`StagedFiles`)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AMNetError(f"{folder}: exists and is not a folder ({what})")
    made = make_folders(folder)
    try:
        temp_beside(folder / "probe").unlink()
    finally:
        for path in reversed(made):
            with contextlib.suppress(OSError):
                path.rmdir()
    return folder


class StagedFiles:
    """Output files that appear together or not at all (a set of PNGs, say).

    Each file is written to a temporary file beside its target as the work goes on; they are
    renamed into place only by :meth:`publish`, once everything succeeded. On failure
    (:meth:`discard`, or an exception in a ``with`` block) every temporary is removed, so no
    partial set is left and files from an earlier run are untouched. Renames on one file
    system do not fail for lack of space, which is what makes the last step safe.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # target -> temporary file
        self._made: list[Path] = []  # folders made for the set, removed again on failure

    def stage(self, out: str | os.PathLike) -> Path:
        """A temporary file to write ``out``'s contents to (its folder made if need be)."""
        out = Path(out)
        key = out.resolve()
        if key in self._staged:
            raise AMNetError(f"{out}: written twice by one command (two inputs with one name?)")
        self._made += make_folders(out.parent)
        self._staged[key] = temp_beside(out)
        return self._staged[key]

    def write_bytes(self, out: str | os.PathLike, data: bytes) -> None:
        tmp = self.stage(out)
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise AMNetError(f"{out}: cannot write ({exc.strerror or exc})") from None

    def publish(self) -> list[Path]:
        """Rename every staged file into place; returns the targets."""
        done = []
        try:
            for out, tmp in self._staged.items():
                publish(tmp, out)
                done.append(out)
            self._made.clear()  # they hold the set now
        finally:
            self.discard()
        return done

    def discard(self) -> None:
        for tmp in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged.clear()
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        self._made.clear()

    def __len__(self) -> int:
        return len(self._staged)

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.discard()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_failure(path: str | os.PathLike, exc: BaseException) -> AMNetError:
    """One line for a write of ``path`` that failed: the system's reason, or for writers that
    lose it (numpy's short writes, PyTorch's zip writer) whether the disk is full. Call it
    before the partial file is removed: its size is part of what filled the disk."""
    reason = getattr(exc, "strerror", None)
    if not reason:
        try:
            full = shutil.disk_usage(Path(path).parent).free < 1 << 20
        except OSError:
            full = False
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        reason = "no space left on the device" if full else first
    return AMNetError(f"{path}: cannot write ({reason})")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so no half file is left."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise AMNetError(f"{path}: cannot write, folder {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise AMNetError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _publish(tmp, path)
    except OSError as exc:
        error = write_failure(path, exc)
        Path(tmp).unlink(missing_ok=True)
        raise error from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        _publish(tmp, path)
    except OSError as exc:
        error = write_failure(path, exc)
        Path(tmp).unlink(missing_ok=True)
        raise error from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _DuplicateKey(ValueError):
    pass


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses a key given twice in one object: json keeps the last
    silently, which would drop a video's annotations or detections without a word."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            shown = key if len(key) <= 60 else key[:57] + "..."
            raise _DuplicateKey(f"key {shown!r} appears twice in one object")
        out[key] = value
    return out


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file; any failure (a key given twice in an object included) becomes a
    one-line AMNetError naming the file."""
    path = Path(path)
    refuse_special_input(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle, object_pairs_hook=unique_object)
    except _DuplicateKey as exc:
        raise AMNetError(f"{path}: {what}: {exc}") from None
    except FileNotFoundError:
        raise AMNetError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise AMNetError(f"{path}: is a folder, expected a {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AMNetError(f"{path}: malformed {what} ({exc})") from None
    except RecursionError:  # Python's parser recurses per level: [[[[...
        raise AMNetError(f"{path}: malformed {what} (nested too deeply)") from None
    except OSError as exc:
        raise AMNetError(f"{path}: cannot read {what} ({exc.strerror})") from None


def channel_mismatch(path: str | os.PathLike, channels: int, expected_dim: int) -> str:
    return f"{path}: features have {channels} channels, the model expects {expected_dim}"


def load_features(
    path: str | os.PathLike, expected_dim: int | None = None, *, mmap: bool = False
) -> np.ndarray:
    """Load one ``[T, C]`` feature array as contiguous float32, refusing pickles and bad arrays.

    ``mmap``: a float32 file is memory-mapped instead of read (other dtypes are read and cast):
    long videos then cost no memory beyond the pages in use (see :func:`release_rows`)."""
    path = Path(path)
    refuse_special_input(path)
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise AMNetError(f"{path}: feature file not found") from None
    except IsADirectoryError:
        raise AMNetError(f"{path}: is a folder, expected a .npy feature file") from None
    except ValueError as exc:
        msg = str(exc)
        if "pickle" in msg.lower() or "object" in msg.lower():
            raise AMNetError(
                f"{path}: holds a pickled/object array, refused (allow_pickle=False)"
            ) from None
        raise AMNetError(f"{path}: not a valid .npy file ({msg.splitlines()[0]})") from None
    except (OSError, EOFError) as exc:
        raise AMNetError(f"{path}: not a readable .npy file ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise AMNetError(f"{path}: expected a single .npy array, found {type(array).__name__}")
    if array.dtype.kind not in "fiu" or array.dtype.kind == "b":
        raise AMNetError(f"{path}: features must be numeric floats, found dtype {array.dtype}")
    if array.ndim != 2:
        raise AMNetError(
            f"{path}: features must have shape [T, C], found shape {list(array.shape)}"
        )
    if expected_dim is not None and array.shape[1] != expected_dim:
        raise AMNetError(channel_mismatch(path, array.shape[1], expected_dim))
    if isinstance(array, np.memmap) and array.dtype != np.float32:
        array = np.array(array)  # a cast reads it all anyway
    with np.errstate(over="ignore"):  # out-of-range float64 becomes inf, reported below
        array = np.ascontiguousarray(array, dtype=np.float32)  # a view for float32 files
    bad = first_non_finite(array)
    if bad is not None:
        raise AMNetError(f"{path}: features contain NaN or Inf (first at snippet {bad})")
    return array


_CHECK_BLOCK_VALUES = 1 << 22  # values per block of a finiteness scan (16 MB of float32)


def first_non_finite(array: np.ndarray) -> int | None:
    """The first row of a ``[T, C]`` array holding NaN or Inf, or None; scanned in blocks so a
    long (memory-mapped) video needs no full-size temporary, and the pages of a mapped file
    are let go again as the scan passes."""
    rows = max(1, _CHECK_BLOCK_VALUES // max(1, array.shape[1] if array.ndim == 2 else 1))
    for start in range(0, array.shape[0], rows):
        block = array[start : start + rows]
        if not np.isfinite(block).all():
            return start + int(np.argwhere(~np.isfinite(block))[0, 0])
        release_rows(array, start + rows)
    return None


def release_rows(array: np.ndarray, upto: int) -> None:
    """Let the kernel drop the resident pages of rows ``[0, upto)`` of a memory-mapped array
    (no-op for ordinary arrays): they are read again from the file if touched, so a pass over a
    long video keeps only a window of it in memory."""
    base: np.ndarray | None = array
    while base is not None and not isinstance(base, np.memmap):
        base = base.base if isinstance(base.base, np.ndarray) else None
    handle = getattr(base, "_mmap", None)
    if (
        handle is None
        or not hasattr(handle, "madvise")
        or not hasattr(mmap_module, "MADV_DONTNEED")
    ):
        return
    offset = getattr(base, "offset", 0)
    row_bytes = array.strides[0] if array.ndim else array.itemsize
    end = offset + min(upto, array.shape[0]) * row_bytes
    end -= end % mmap_module.PAGESIZE
    if end > 0:
        with contextlib.suppress(OSError, ValueError):
            handle.madvise(mmap_module.MADV_DONTNEED, 0, end)


_NPY_MAGIC = b"\x93NUMPY"


def read_features(
    path: str | os.PathLike, input_dim: int | None, *, mmap: bool = False
) -> np.ndarray:
    """One feature file as contiguous float32 ``[T, C]``; AMNetError naming the problem.
    ``input_dim``: the channels the model expects (None: any; checked later by the caller).
    ``mmap``: memory-map a float32 file instead of reading it (see :func:`load_features`)."""
    refuse_special_input(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise AMNetError(f"{path}: feature file not found") from None
    except IsADirectoryError:
        raise AMNetError(f"{path}: is a folder, expected a .npy feature file") from None
    except OSError as exc:
        raise AMNetError(f"{path}: cannot read ({exc.strerror})") from None
    if not head:
        raise AMNetError(f"{path}: empty file")
    if head != _NPY_MAGIC:
        what = "a .npz archive" if head.startswith(b"PK") else "no NumPy header"
        raise AMNetError(f"{path}: not a .npy file ({what})")
    try:
        return load_features(path, expected_dim=input_dim, mmap=mmap)
    except MemoryError:
        raise AMNetError(f"{path}: too large to load") from None


def read_ahead(items: Sequence[T], read: Callable[[T], R], depth: int = 2) -> Iterator[R]:
    """``read(item)`` for each item, in order, with up to ``depth`` items being read ahead on
    a thread (file reads release the GIL) while the caller works on the current one. An
    exception from ``read`` is raised when its item's turn comes."""
    with ThreadPoolExecutor(1, thread_name_prefix="amnet-read") as reader:
        ahead = deque(reader.submit(read, item) for item in items[:depth])
        for i in range(len(items)):
            result = ahead.popleft().result()
            if i + depth < len(items):
                ahead.append(reader.submit(read, items[i + depth]))
            yield result
