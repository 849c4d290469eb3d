"""Storage credentials for the flow runs this process starts, kept out of their parameters.

Prefect stores every flow parameter and shows it in its UI, so ``llie run --storage-option
secret=...`` hands credentials to the flow here instead: the flow body runs in the caller's
context, reads them, and passes them on to its tasks as plain arguments (tasks travel to Dask
workers pickled; their arguments are not stored). A deployment's runs find none here: their
credentials come from the environment (AWS_* variables, a profile, an instance role).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_CREDENTIALS: ContextVar[dict[str, Any] | None] = ContextVar("llie_storage_credentials", default=None)


@contextlib.contextmanager
def storage_credentials(credentials: dict[str, Any] | None) -> Iterator[None]:
    """Flow runs started inside this block add ``credentials`` to their storage options."""
    token = _CREDENTIALS.set(credentials or None)
    try:
        yield
    finally:
        _CREDENTIALS.reset(token)


def current() -> dict[str, Any]:
    return dict(_CREDENTIALS.get() or {})
