"""Storage helpers over fsspec: the same calls for local folders and object stores.

Every function takes a URL (a plain path, ``file://``, ``s3://`` ...) and an optional
``storage_options`` dict handed to fsspec. Credentials belong in ``storage_options`` or the
usual environment variables, never in the URL; any ``user:pass@`` that slips into a URL is
removed by :func:`redact_url` before the URL is shown anywhere, and from error texts, which may
quote it without the URL around it, by :func:`scrub`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import fsspec
from fsspec.implementations.local import LocalFileSystem

from llie.batch import localfs
from llie.batch.imageio import is_image_name

StorageOptions = dict[str, Any] | None

# The userinfo runs to the LAST "@" of the URL, not the first: secrets contain "@", "/", "+" and
# ":" (AWS secret keys routinely hold "/" and "+"), and stopping early would show the rest of
# them. Without a ":" before the first "/" a "/" ends the authority as usual, so a plain path
# with "@" in a file name (s3://bucket/icon@2x.png) is left alone. The price is that a URL that
# does carry credentials and also an "@" later in its path loses that path up to it: too much
# hidden rather than too little.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s]*:\S*|[^/\s]*)@")
# Web URLs only: there a query string can carry a signature (pre-signed URLs); in an object key
# (s3://bucket/what?.png) a "?" is part of the name.
_QUERY = re.compile(r"(?P<scheme>[Hh][Tt][Tt][Pp][Ss]?://[^\s?#]*)\?[^\s#]*")
# Shorter pieces of a credential are not scrubbed on their own: replacing every "ab" or "u" in
# a message would garble it while hiding close to nothing.
_MIN_SECRET_PIECE = 4


def redact_url(text: str) -> str:
    """Remove ``user:pass@`` and query strings (pre-signed URLs carry signatures there).

    Works on a URL or on any text that contains URLs, such as an exception message.
    """
    text = _USERINFO.sub(r"\g<scheme>***@", str(text))
    return _QUERY.sub(r"\g<scheme>?***", text)


def url_secrets(*urls: str | None) -> tuple[str, ...]:
    """The credentials written into ``urls`` (their ``user:pass@`` parts), longest first.

    :func:`redact_url` only recognises credentials inside something that looks like a URL, but
    libraries also quote them without the scheme (botocore: ``Invalid bucket name
    "KEY:SECRET@bucket"``), or cut at a "/" inside the secret, which they take for the end of a
    bucket name. So besides the whole userinfo, its pieces between ":", "/" and "@" are returned
    too, each also percent-decoded, as a library may decode them before quoting them.
    """
    found: set[str] = set()
    for url in urls:
        for match in _USERINFO.finditer(str(url or "")):
            for info in {match.group("userinfo"), unquote(match.group("userinfo"))}:
                user, _, password = info.partition(":")
                found.update((info, user, password, *re.split(r"[:/@]", info)))
    return tuple(sorted((p for p in found if len(p) >= _MIN_SECRET_PIECE), key=lambda p: (-len(p), p)))


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the exact ``secrets`` (see :func:`url_secrets`) and without URL credentials.

    The exact strings go first, and longest first, so that a shorter piece never breaks a longer
    one apart before it is replaced.
    """
    text = str(text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return redact_url(text)


def describe_error(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """One readable line for an exception, safe to log or store.

    ``secrets``: the run's :func:`url_secrets`, for messages that quote them outside any URL.
    """
    msg = str(exc).strip() or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {one_line(scrub(msg, secrets))}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped (``\\n``, ``\\x1b``).

    A message can quote a file name, and a file name may hold a newline: left as it is, it would
    start a line of its own in a log, one that can pass for a line the program wrote.
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def quote_name(name: str) -> str:
    """A file name as a log shows it: quoted, with control characters escaped (``'a\\nb.png'``)."""
    return repr(str(name))


def _unreachable_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:  # s3fs talks through aiobotocore/aiohttp
        import aiohttp
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # pragma: no cover - both come with s3fs
        return tuple(types)
    return (*types, BotoConnectionError, HTTPClientError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the storage could not be reached (refused, reset, timed out).

    Such an error is about the store, not about the file being read or written: the caller should
    fail and retry the whole unit of work rather than record one broken file. Explicit causes
    (``raise ... from err``) are followed, since libraries wrap the socket errors they get.
    """
    types = _unreachable_types()
    for _ in range(10):
        if isinstance(exc, types):
            return True
        if exc.__cause__ is None:
            break
        exc = exc.__cause__
    return False


# A write that fails with one of these fails for every file of the output, not for one image: the disk
# is full, over quota, read-only or not ours. Recorded per image, a run would "finish" with every
# photo marked broken and a plain resume would redo nothing.
_WRITE_OUTAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def is_write_outage(exc: BaseException) -> bool:
    """True when writing to the output failed because of the output store itself.

    No space, quota exceeded, read-only file system, permission denied (locally, or an object store
    that refuses the write). Like :func:`is_unreachable`, the caller should fail and retry the unit of
    work; a resume once the store is fixed then completes it. Explicit causes are followed.
    """
    for _ in range(10):
        if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in _WRITE_OUTAGE_ERRNOS):
            return True
        if exc.__cause__ is None:
            break
        exc = exc.__cause__
    return False


_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$", re.DOTALL)
_WEB_SCHEMES = ("http", "https")


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries a user name or password before its host or bucket (``s3://KEY:SECRET@b``).

    A ``:`` in a bucket's place counts too: a secret with a ``/`` in it (AWS secrets have them) ends
    the authority early, as in ``s3://KEY:abc/def@bucket``. Web URLs may have a numeric port there.
    """
    match = _SCHEME.match(str(url))
    if not match:
        return False
    authority = match.group("rest").split("/", 1)[0]
    if "@" in authority:
        return True
    if ":" not in authority:
        return False
    if match.group("scheme").lower() in _WEB_SCHEMES:
        return not authority.rsplit(":", 1)[1].isdigit()
    return True


def check_no_credentials(url: str | None) -> None:
    """Refuse a URL with credentials in it, before it is used, logged or stored anywhere."""
    if url is not None and has_credentials(url):
        raise ValueError(
            f"{redact_url(url)}: credentials in a URL are refused (they would end up in logs and in "
            "Prefect's database); put them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), "
            "an AWS profile (AWS_PROFILE, ~/.aws), or storage_options"
        )


def filesystem(url: str, storage_options: StorageOptions = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec file system of ``url`` and the path on it: the one way llie turns a URL into files.

    One file system per URL, never a chain: fsspec reads ``a::b`` as "``a`` inside ``b``", so a photo
    named ``x::y.png`` would be read from somewhere else. A URL without a scheme is a local path.
    """
    check_no_credentials(url)
    url = str(url)
    match = _SCHEME.match(url)
    protocol = match.group("scheme").lower() if match else "file"
    cls = fsspec.get_filesystem_class(protocol)
    options = cls._get_kwargs_from_urls(url) if match else {}
    options.update(storage_options or {})
    fs = cls(**options)
    return fs, fs._strip_protocol(url)


_fs = filesystem


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(url: str, rel: str) -> str:
    """``url`` + ``/`` + ``rel``, refusing anything that could escape ``url``.

    ``rel`` comes from listings of other folders (or from users), so ``..`` and absolute
    paths are rejected instead of being resolved.
    """
    rel = str(rel)
    # a drive letter only with a backslash (C:\x): "C:/x" is a folder named "C:" on POSIX and S3
    if not rel or rel.startswith("/") or re.match(r"^[A-Za-z]:\\", rel) or "://" in rel:
        raise ValueError(f"not a relative path: {rel!r}")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"relative path must stay inside its root: {rel!r}")
    return str(url).rstrip("/") + "/" + "/".join(parts)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def is_safe_rel(rel: str) -> bool:
    """Whether ``rel`` names something *inside* a root: no empty, ``.`` or ``..`` segment, not absolute.

    Object stores allow keys such as ``in/../x`` or ``in//x``; no relative path can stand for them
    without pointing somewhere else, so listings leave them out.
    """
    rel = str(rel)
    return bool(rel) and all(part not in ("", ".", "..") for part in rel.split("/"))


def _local_version(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass
class _Listing:
    """What a local listing found: images and their versions, links out of the root, unreadable folders."""

    follow_symlinks: bool = False
    found: dict[str, str] = field(default_factory=dict)
    links_out: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _list_local(root: str, listing: _Listing) -> _Listing:
    root_real = os.path.realpath(root)
    if not os.path.isdir(root_real):
        raise FileNotFoundError(f"no such folder: {root}")

    def walk(dir_path: str, rel_prefix: str, ancestors: frozenset[str]) -> None:
        try:
            with os.scandir(dir_path) as it:
                entries = list(it)
        except OSError as exc:
            if not rel_prefix:  # the root itself: nothing to run over
                raise
            # one folder this user may not read (lost+found on a mounted disk) must not stop the rest
            listing.unreadable.append(f"{rel_prefix.rstrip('/')} ({exc.strerror or exc})")
            return
        for entry in entries:
            # Hidden folders too: .git, .Trash, our own temp files from write_bytes_atomic.
            if not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):  # gone since the folder was read
                    visit(entry, rel_prefix + entry.name, ancestors)

    def visit(entry: os.DirEntry, rel: str, ancestors: frozenset[str]) -> None:
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            # A link out of the tree could expose (and, via the output mirror, copy)
            # files the caller never pointed us at; only an explicit opt-in follows it.
            if not listing.follow_symlinks and not _within(target, root_real):
                if os.path.isfile(target) and is_image_name(entry.name):
                    listing.links_out.append(rel)
                return
            if os.path.isdir(target):
                if target not in ancestors:  # a link to an ancestor would loop forever
                    walk(entry.path, rel + "/", ancestors | {target})
            elif os.path.isfile(target) and is_image_name(entry.name):
                listing.found[rel] = _local_version(os.stat(target))
        elif entry.is_dir(follow_symlinks=False):
            walk(entry.path, rel + "/", ancestors | {os.path.realpath(entry.path)})
        elif entry.is_file(follow_symlinks=False) and is_image_name(entry.name):
            listing.found[rel] = _local_version(entry.stat(follow_symlinks=False))

    walk(root, "", frozenset({root_real}))
    return listing


def list_image_versions(
    url: str,
    storage_options: StorageOptions = None,
    follow_symlinks: bool = False,
    unreadable: list[str] | None = None,
) -> dict[str, str]:
    """:func:`list_images` with a version of each image: ``size:mtime_ns`` locally, ``size:ETag`` on an
    object store (``size:last-modified`` where it has no ETag). Any change of content changes it, so a
    resumed run can tell an image replaced under the same name from one it has already done.

    A local folder below the root that cannot be read is left out and named (with why) in ``unreadable``."""
    fs, root = _fs(url, storage_options)
    if _is_local(fs):
        listing = _list_local(root, _Listing(follow_symlinks))
        if unreadable is not None:
            unreadable.extend(listing.unreadable)
        return dict(sorted(listing.found.items()))
    root = root.rstrip("/")
    found = {}
    for path, info in fs.find(root, withdirs=False, detail=True).items():
        if not path.startswith(root + "/"):
            continue
        rel = path[len(root) + 1 :]
        parts = rel.split("/")
        if not is_safe_rel(rel) or any(p.startswith(".") for p in parts) or not is_image_name(parts[-1]):
            continue
        tag = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
        found[rel] = f"{info.get('size')}:{str(tag).strip(chr(34))}"
    if not found and not fs.exists(root):
        raise FileNotFoundError(f"no such folder: {redact_url(url)}")
    return dict(sorted(found.items()))


def list_images(url: str, storage_options: StorageOptions = None, follow_symlinks: bool = False) -> list[str]:
    """Image files under ``url``, recursively, as sorted relative POSIX paths.

    Hidden files and folders and non-image extensions are skipped, and so are object keys that
    no safe relative path can name (see :func:`is_safe_rel`). Locally, symlinks that resolve
    outside ``url`` are ignored unless ``follow_symlinks`` is true (links that loop back into
    the tree are never followed twice). A missing root raises FileNotFoundError so that a
    typo in a URL is not mistaken for an empty archive.
    """
    return list(list_image_versions(url, storage_options, follow_symlinks))


def list_local_images(root: str, unreadable: list[str] | None = None) -> tuple[list[str], list[str]]:
    """:func:`list_images` of a local folder, and the image links in it that lead out of it (not followed);
    folders that cannot be read are named in ``unreadable``."""
    listing = _list_local(root, _Listing())
    if unreadable is not None:
        unreadable.extend(listing.unreadable)
    return sorted(listing.found), sorted(listing.links_out)


def list_files(url: str, storage_options: StorageOptions = None) -> list[str]:
    """Names of the plain files directly inside ``url`` (not recursive); [] if it is missing."""
    return _entries(url, storage_options, "file")


def list_folders(url: str, storage_options: StorageOptions = None) -> list[str]:
    """Names of the folders directly inside ``url``; [] if it is missing."""
    return _entries(url, storage_options, "directory")


def _entries(url: str, storage_options: StorageOptions, kind: str) -> list[str]:
    fs, root = _fs(url, storage_options)
    # Object stores cache listings; a fresh look is what callers polling for progress want.
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(root)
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return []
    return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == kind)


def read_bytes(url: str, storage_options: StorageOptions = None) -> bytes:
    fs, path = _fs(url, storage_options)
    return fs.cat_file(path)


def exists(url: str, storage_options: StorageOptions = None) -> bool:
    fs, path = _fs(url, storage_options)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(path)
    return fs.exists(path)


def remove(url: str, storage_options: StorageOptions = None) -> None:
    """Delete one file; a missing file is not an error (the goal state is reached)."""
    fs, path = _fs(url, storage_options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache(posixpath.dirname(path))


def write_bytes_atomic(url: str, data: bytes, storage_options: StorageOptions = None, root: str | None = None) -> None:
    """Write ``data`` so that readers see either the old file or the whole new one.

    Locally: a hidden, locked temp file in the destination folder (same filesystem, so the rename is
    atomic) then a rename (:func:`llie.batch.localfs.write_atomic`); with ``root`` (a URL above
    ``url``), no folder on the way may lead out of it through a link. Object stores: one put; an
    object only becomes visible once the upload completes, so there is never a partial object.
    """
    fs, path = _fs(url, storage_options)
    if not _is_local(fs):
        fs.pipe_file(path, bytes(data))
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache(posixpath.dirname(path))
        return
    localfs.write_atomic(path, data, None if root is None else _fs(root, storage_options)[1])


def read_inside(root_url: str, rel: str, storage_options: StorageOptions = None, max_bytes: int | None = None) -> bytes:
    """The bytes of ``rel`` under ``root_url``, and only from inside it.

    Locally the file must be a regular one (a FIFO or a device is refused without blocking) whose real
    place, links resolved as it was opened, is inside the root: a folder swapped for a link after the
    listing reads nothing outside. More than ``max_bytes`` is refused, not read.
    """
    url = join(root_url, rel)
    fs, path = _fs(url, storage_options)
    if _is_local(fs):
        return localfs.read_regular(path, _fs(root_url, storage_options)[1], max_bytes)
    if max_bytes is None:
        return fs.cat_file(path)
    size = fs.info(path).get("size")
    if size is not None and int(size) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes: not read")
    with fs.open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes: not read")
    return data


def remove_stale_temps(url: str, rel_paths: list[str], storage_options: StorageOptions = None) -> list[str]:
    """Delete temporary files that :func:`write_bytes_atomic` left behind for ``rel_paths``.

    A process killed between writing its temporary file and renaming it (a Dask worker that
    died, ``kill -9``) cannot clean up after itself. A temporary file that a live writer still holds
    (another run writing the same output) is left alone (:func:`llie.batch.localfs.remove_if_abandoned`).
    Local folders only: object stores have no temporary files. One listing per folder; returns the
    relative paths of what was removed.
    """
    fs, root = _fs(url, storage_options)
    if not _is_local(fs):
        return []
    wanted: dict[str, set[str]] = {}
    for rel in rel_paths:
        if is_safe_rel(rel):
            folder, _, name = str(rel).rpartition("/")
            wanted.setdefault(folder, set()).add(name)
    removed, now = [], time.time()
    for folder, names in sorted(wanted.items()):
        try:
            entries = os.listdir(os.path.join(root, folder) if folder else root)
        except (FileNotFoundError, NotADirectoryError):
            continue
        prefixes = {localfs.temp_prefix(name, os.path.join(root, folder) if folder else root) for name in names}
        for entry in entries:
            rel = f"{folder}/{entry}" if folder else entry
            if entry[:-12] in prefixes and localfs.is_temp_name(entry):
                if localfs.remove_if_abandoned(os.path.join(root, rel), now):
                    removed.append(rel)
    return sorted(removed)


def remove_stale_temps_in(url: str, storage_options: StorageOptions = None) -> list[str]:
    """Delete every abandoned temporary file of :func:`write_bytes_atomic` directly inside ``url``, a
    folder only llie writes (a run's report folder), whatever the name it was for; returns the names removed."""
    fs, root = _fs(url, storage_options)
    if not _is_local(fs):
        return []
    try:
        entries = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time()
    return sorted(
        e for e in entries if localfs.is_temp_name(e) and localfs.remove_if_abandoned(os.path.join(root, e), now)
    )


def _normalise(url: str, storage_options: StorageOptions) -> tuple[str, str]:
    fs, path = _fs(url, storage_options)
    if _is_local(fs):
        return "file", os.path.realpath(path)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, posixpath.normpath("/" + path.strip("/"))


def _same_or_below(path: str, root: str) -> bool:
    """Whether local ``path`` is ``root`` or inside it, by file identity (device and inode).

    Paths alone miss aliases that :func:`os.path.realpath` cannot see through: a bind mount, a second
    mount of the same share. So every existing ancestor of ``path`` is compared with ``root`` itself.
    """
    if _within(path, root):
        return True
    try:
        root_stat = os.stat(root)
    except OSError:  # a root that does not exist yet has no identity to compare
        return False
    current = path
    while True:
        try:
            st = os.stat(current)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) == (root_stat.st_dev, root_stat.st_ino):
            return True
        parent = os.path.dirname(current)
        if parent == current:
            return False
        current = parent


def _overlap(a_url: str, b_url: str, storage_options: StorageOptions) -> bool:
    a_proto, a_path = _normalise(a_url, storage_options)
    b_proto, b_path = _normalise(b_url, storage_options)
    if a_proto != b_proto:
        return False
    if a_proto == "file":
        return _same_or_below(a_path, b_path) or _same_or_below(b_path, a_path)
    return _within(a_path, b_path) or _within(b_path, a_path)


def check_output_not_inside_input(input_url: str, output_url: str, storage_options: StorageOptions = None) -> None:
    """Refuse an output that equals, contains or sits inside the input, also through an alias.

    Outputs mirror input paths, so an overlap would make a rerun enhance its own outputs
    (or overwrite originals).
    """
    if _overlap(input_url, output_url, storage_options):
        raise ValueError(
            f"output {redact_url(output_url)} overlaps input {redact_url(input_url)}: "
            "choose an output folder outside the input (and not containing it)"
        )


def check_folders_apart(
    input_url: str, output_url: str, reference_url: str | None = None, storage_options: StorageOptions = None
) -> None:
    """:func:`check_output_not_inside_input`, and the same for the reference folder and the output:
    outputs are written at the references' relative paths, so an overlap would overwrite them."""
    check_output_not_inside_input(input_url, output_url, storage_options)
    if reference_url is not None and _overlap(reference_url, output_url, storage_options):
        raise ValueError(
            f"output {redact_url(output_url)} overlaps reference {redact_url(reference_url)}: "
            "the references would be overwritten; choose an output folder apart from them"
        )
