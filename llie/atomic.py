"""Atomic writes to local files: a reader sees the old file or the whole new one, never a part.

The one local writer of llie (outputs, Parquet, reports, checkpoints, synthetic pairs). It needs
no fsspec; ``llie.batch.storage.write_bytes_atomic`` routes local URLs here and object stores to a put.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from typing import BinaryIO

# What mkstemp adds to the prefix of a temporary file: 8 characters, then the suffix.
TEMP_TAIL = re.compile(r"^[a-z0-9_]{8}\.tmp$")
_TEMP_EXTRA = len(".") + len(".") + 8 + len(".tmp")


def write_file(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a hidden temporary file beside ``path``, then rename it into place.

    The temporary file lies in the destination folder (same file system, so the rename is
    atomic), is synced before the rename, and is removed if ``write`` fails.
    """
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix(os.path.basename(path), folder), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; outputs should get the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """:func:`write_file` for data already in memory."""
    write_file(path, lambda f: f.write(data))


def _name_max(folder: str) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def temp_prefix(name: str, folder: str) -> str:
    """The prefix of the temporary file that :func:`write_file` writes ``name`` through.

    ``.<name>.`` as a rule (hidden, and it says whose it is); for a name so long that the temporary
    name would pass the file system's limit, ``.<hash of name>.`` instead.
    """
    if len(os.fsencode(name)) + _TEMP_EXTRA <= _name_max(folder):
        return f".{name}."
    return "." + hashlib.sha256(os.fsencode(name)).hexdigest()[:32] + "."
