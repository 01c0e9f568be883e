"""Output files of the export tools: a temporary file beside the target, renamed when complete.

No tool leaves a partial model behind: everything is written to a temporary file in the target's
folder (same file system, so the final ``os.replace`` is atomic) and the temporary file is
removed on any failure.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from amnet.errors import AMNetError

__all__ = ["check_out_path", "file_sha256", "publish", "temp_beside"]


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(os.curdir)


def check_out_path(out: str | os.PathLike) -> Path:
    """Fail early (one line) when ``out`` names a folder or sits in a folder that does not exist."""
    out = Path(out)
    if out.is_dir():
        raise AMNetError(f"{out}: is a folder, expected an output file path")
    parent = _parent(out)
    if not parent.is_dir():
        raise AMNetError(f"{out}: cannot write, folder {parent} does not exist")
    return out


def temp_beside(out: str | os.PathLike) -> Path:
    """An empty temporary file next to ``out``; creating it is the real test that the folder is
    writable (permission bits do not stop root, a read-only mount does)."""
    out = check_out_path(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=_parent(out))
    except OSError as exc:
        raise AMNetError(f"{out}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Give ``tmp`` the permissions of a normally created file and rename it to ``out``."""
    # mkstemp creates files readable by the owner only; a model file is meant to be shared.
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, out)
    return Path(out)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the same digest as ``amnet.checkpoint.file_sha256``, without
    importing torch)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
