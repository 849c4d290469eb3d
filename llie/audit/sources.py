"""Where an audit may read a run's photos from: the run's own roots, never the paths its rows name.

A Parquet file is data anyone with write access to the output can change, and the audit reads with its
own credentials: a row's ``input_path`` could name a web address, a file outside the run, ``/dev/zero``
or a FIFO. So the audit reads each photo by its ``rel_path`` under the output, and under the input and
reference folders the run's manifest records (only where they are of the output's kind: local with
local, the same object store), as regular files of a bounded size. Anything else is "unavailable".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llie.batch import archive, storage

# A photo's file larger than this is not read for a thumbnail (a 200 MP 16-bit TIFF is about 1.2 GB).
MAX_PHOTO_BYTES = 1 << 30
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def _kind(url: str) -> str:
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else "file"
    return {"local": "file", "s3a": "s3"}.get(scheme, scheme)


def _root_like(url: Any, output_url: str) -> str | None:
    """``url`` (from the run's manifest) when it is a folder of the output's kind, else None."""
    if not isinstance(url, str) or not url or storage.has_credentials(url):
        return None
    return url if _kind(url) == _kind(output_url) else None


@dataclass(frozen=True)
class PhotoRoots:
    """The folders an audit reads a run's photos from: the output, and the recorded input and reference."""

    output: str
    input: str | None = None
    reference: str | None = None

    @classmethod
    def of_run(cls, output_url: str, manifest: dict[str, Any] | None) -> PhotoRoots:
        manifest = manifest or {}
        return cls(
            output_url,
            _root_like(manifest.get("input_url"), output_url),
            _root_like(manifest.get("reference_url"), output_url),
        )

    def read(self, column: str, rel_path: str, storage_options: storage.StorageOptions = None) -> bytes | None:
        """The bytes of the ``column`` photo ("before", "after", "reference") of ``rel_path``, or None."""
        root = {"before": self.input, "after": self.output, "reference": self.reference}[column]
        if root is None:
            return None
        try:  # join refuses "..", absolute paths and URLs; read_inside links out, FIFOs, devices
            return storage.read_inside(root, archive.from_printable(rel_path), storage_options, MAX_PHOTO_BYTES)
        except Exception:  # unreadable, missing, refused: shown as unavailable
            return None
