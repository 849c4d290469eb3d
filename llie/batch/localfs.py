"""Local files that stay inside their root: no link out of it, regular files only, and temporary files
that say whether a writer still holds them.

The listing of a folder is a snapshot: between it and the read (or the write) a folder can be swapped
for a link out of the root, or a photo for a FIFO. So the checks are made on what was opened (its
descriptor), not on the path before opening it. Nothing here knows URLs: :mod:`llie.batch.storage`
calls it for local paths.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO

TEMP_TAIL = re.compile(r"^[a-z0-9_]{8}\.tmp$")  # what write_atomic adds to the prefix of a temporary file
_TEMP_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789_"
_TEMP_EXTRA = len(".") + len(".") + 8 + len(".tmp")
# A temporary file younger than this may be one whose writer has created it and not yet locked it.
TEMP_GRACE_SECONDS = 2.0
_READ_CHUNK = 1 << 20


class OutsideRootError(ValueError):
    """A path that leads out of its root through a link: neither read nor written."""


class NotRegularFileError(ValueError):
    """Not a regular file (a FIFO, a device, a folder): never opened for reading its content."""


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _real_path_of(fd: int, path: str) -> str:
    """Where the open descriptor ``fd`` really is (Linux: exact, as opened); elsewhere the path resolved now."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


@contextlib.contextmanager
def open_regular(path: str, root: str | None = None) -> Iterator[BinaryIO]:
    """``path`` opened for reading, if it is a regular file (inside ``root``, when given, links resolved).

    Opened without blocking: a FIFO would otherwise wait for a writer forever.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{_kind(mode)}, not a regular file: not read")
        if root is not None and not within(_real_path_of(fd, path), os.path.realpath(root)):
            raise OutsideRootError("a link leads out of its folder: not read")
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_regular(path: str, root: str | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes of :func:`open_regular`; more than ``max_bytes`` (when given) is refused, not read."""
    with open_regular(path, root) as fh:
        if max_bytes is None:
            return fh.read()
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes: not read")
    return data


def _check_folder_inside(folder: str, root: str) -> None:
    """Refuse ``folder`` when it, or its nearest existing ancestor, resolves out of ``root``."""
    root, current = os.path.normpath(root), os.path.normpath(folder)
    while not os.path.lexists(current):
        if current == root or not within(current, root):  # nothing of it exists yet below the root
            return
        current = os.path.dirname(current)
    if not within(os.path.realpath(current), os.path.realpath(root)):
        raise OutsideRootError("a link leads out of the output folder: not written through it")


def _name_max(folder: str) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def temp_prefix(name: str, folder: str) -> str:
    """The prefix of the temporary file that :func:`write_atomic` writes ``name`` through.

    ``.<name>.`` as a rule (hidden, and it says whose it is); for a name so long that the temporary
    name would pass the file system's limit, ``.<hash of name>.`` instead.
    """
    if len(os.fsencode(name)) + _TEMP_EXTRA <= _name_max(folder):
        return f".{name}."
    return "." + hashlib.sha256(os.fsencode(name)).hexdigest()[:32] + "."


def write_atomic(path: str, data: bytes, root: str | None = None) -> None:
    """Write ``data`` to ``path`` through a hidden temporary file in its folder, then rename it.

    The temporary file is locked (``flock``) while it is written: :func:`remove_if_abandoned` leaves a
    locked one alone, so one run's cleanup never deletes another's file mid-write. With ``root``, a
    folder that leads out of it through a link is refused before anything is created, and the folder
    is checked again once opened; everything after goes through that open folder.
    """
    folder = os.path.dirname(path) or "."
    if root is not None:
        _check_folder_inside(folder, root)
    os.makedirs(folder, exist_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if root is not None and not within(_real_path_of(dir_fd, folder), os.path.realpath(root)):
            raise OutsideRootError("a link leads out of the output folder: not written through it")
        _write_in(dir_fd, folder, os.path.basename(path), data)
    finally:
        os.close(dir_fd)


def _write_in(dir_fd: int, folder: str, name: str, data: bytes) -> None:
    prefix = temp_prefix(name, folder)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = prefix + "".join(secrets.choice(_TEMP_ALPHABET) for _ in range(8)) + ".tmp"
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        umask = os.umask(0)  # the usual umask-based mode, as a plain open would give
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        # by path: the temporary file's random name exists only in the folder checked above, so a folder
        # swapped for a link since cannot take the rename elsewhere (it fails instead)
        os.replace(os.path.join(folder, tmp), os.path.join(folder, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)


def is_temp_name(entry: str) -> bool:
    """Whether ``entry`` is named like a temporary file of :func:`write_atomic`."""
    return entry.startswith(".") and len(entry) > 13 and bool(TEMP_TAIL.match(entry[-12:]))


def remove_if_abandoned(path: str, now: float) -> bool:
    """Delete the temporary file ``path`` unless a writer still holds it; True when it was deleted.

    A writer that was killed holds no lock any more; a live one (another run writing the same output)
    does, and its file stays. An empty file created within :data:`TEMP_GRACE_SECONDS` may not be locked yet.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            return False
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_size == 0 and now - st.st_mtime < TEMP_GRACE_SECONDS):
            return False  # (an empty, new one may be a writer's between creating and locking it)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a writer is at work on it
        try:
            current = os.lstat(path)
        except FileNotFoundError:
            return False
        if (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
            return False  # renamed into place and replaced meanwhile
        os.unlink(path)
        return True
    finally:
        os.close(fd)
