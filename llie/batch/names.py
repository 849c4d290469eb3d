"""File names as text: any name a POSIX file system allows, spelled in valid UTF-8 and back."""

from __future__ import annotations

import re

_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes of a file name that is not UTF-8 shown as ``\\xff`` escapes.

    Such names are legal on POSIX file systems but cannot go into Parquet, JSON or logs as they are.
    A backslash of the name itself is doubled, so that no two names share one spelling (``b\\xff.png``,
    one byte, and ``b\\\\xff.png``, four characters) and :func:`from_printable` gives the name back.
    """
    doubled = str(text).replace("\\", "\\\\")
    return doubled.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def from_printable(text: str) -> str:
    """The file name :func:`printable` spelled as ``text`` (bytes that are not UTF-8 as surrogates again)."""
    if "\\" not in text:
        return text

    def unescape(match: re.Match[str]) -> str:
        code = match.group(1)
        return "\\" if code == "\\" else bytes([int(code[1:], 16)]).decode("utf-8", "surrogateescape")

    return _ESCAPE.sub(unescape, text)
