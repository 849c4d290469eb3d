"""fsspec ``storage_options`` from the command line: ``--storage-option KEY=VALUE``, repeatable.

The same options pandas, polars and Dask take (for S3: ``endpoint_url``, ``anon``, ``profile``,
``client_kwargs.region_name``, ``key`` / ``secret`` / ``token``). A dotted key fills a nested dict;
a value that reads as JSON (``true``, ``50``, ``{"a": 1}``) is taken as such, except under a
credential key, which always stays a string. Credentials are told apart by their key, so that
they can be kept out of what Prefect stores and out of anything printed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

# s3fs: key, secret, token; adlfs: account_key, sas_token, client_secret; gcsfs: token; http: password.
_CREDENTIAL_KEY = re.compile(r"(^|_)(key|secret|token|password|passwd|credentials?|sas)$", re.IGNORECASE)


def is_credential(key: str) -> bool:
    """True for a key that holds a credential (its last dotted part: ``key``, ``client_secret`` ...)."""
    return bool(_CREDENTIAL_KEY.search(key.rsplit(".", 1)[-1]))


def _value(key: str, text: str) -> Any:
    if is_credential(key):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse(items: Iterable[str]) -> dict[str, Any]:
    """``["endpoint_url=http://minio:9000", "client_kwargs.region_name=eu-west-1"]`` -> nested dict."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not all(parts):
            raise ValueError(f"storage option {key or item!r}: expected KEY=VALUE (a dotted KEY fills a nested option)")
        node = options
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"storage option {key!r}: {part!r} is already set to a value")
        node[parts[-1]] = _value(key, text)
    return options


def split_credentials(options: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, credentials): the same nesting, credentials apart."""
    settings: dict[str, Any] = {}
    credentials: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if isinstance(value, dict):
            sub_settings, sub_credentials = split_credentials(value)
            if sub_settings or not sub_credentials:
                settings[key] = sub_settings
            if sub_credentials:
                credentials[key] = sub_credentials
        elif is_credential(key):
            credentials[key] = value
        else:
            settings[key] = value
    return settings, credentials


def merge(*options: dict[str, Any] | None) -> dict[str, Any]:
    """Later options win; nested dicts are merged, not replaced."""
    merged: dict[str, Any] = {}
    for opts in options:
        for key, value in (opts or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def credential_values(options: dict[str, Any] | None) -> tuple[str, ...]:
    """The credentials' values, for scrubbing them out of error messages (``storage.scrub``)."""
    _, credentials = split_credentials(options)
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        for value in node.values():
            if isinstance(value, dict):
                walk(value)
            elif value is not None and len(str(value)) >= 4:
                found.append(str(value))

    walk(credentials)
    return tuple(found)


def _shown(options: dict[str, Any] | None) -> list[str]:
    def walk(node: dict[str, Any], prefix: str) -> list[str]:
        out: list[str] = []
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                out += walk(value, name + ".")
            elif is_credential(name):
                out.append(f"{name}=***")
            else:
                out.append(f"{name}={value if isinstance(value, str) else json.dumps(value)}")
        return out

    return walk(options or {}, "")


def describe(options: dict[str, Any] | None) -> str:
    """The options as ``KEY=VALUE`` items, each credential's value shown as ``***``."""
    return " ".join(_shown(options))


def as_arguments(options: dict[str, Any] | None) -> list[str]:
    """``--storage-option KEY=VALUE`` arguments that give these options again (credentials as ``***``)."""
    args: list[str] = []
    for item in _shown(options):
        args += ["--storage-option", item]
    return args
