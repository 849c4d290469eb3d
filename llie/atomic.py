"""Atomic writes to local files: a reader sees the old file or the whole new one, never a part.

One writer for all of llie (outputs, Parquet, reports, checkpoints, synthetic pairs):
``llie.batch.localfs.write_atomic`` (a locked, hidden temporary file beside the target, then a rename).
``llie.batch.storage.write_bytes_atomic`` routes local URLs there and object stores to a put.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import BinaryIO

from llie.batch.localfs import TEMP_TAIL, temp_prefix, write_atomic

__all__ = ["TEMP_TAIL", "temp_prefix", "write_bytes", "write_file"]


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``data`` to ``path`` atomically, creating its folder if needed."""
    write_atomic(os.fspath(path), data)


def write_file(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """What ``write(f)`` writes to a file object, to ``path`` atomically; nothing changes if it fails."""
    buffer = io.BytesIO()
    write(buffer)
    write_bytes(path, buffer.getvalue())
