"""What ``llie`` prints when a command fails on something other than a usage error: one line, the
traceback only with ``llie --debug`` (or LLIE_DEBUG=1)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

DEBUG_ENV = "LLIE_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def argument_secrets(argv: Sequence[str]) -> tuple[str, ...]:
    """The credentials on a command line: URL userinfo and ``--storage-option`` values of credential keys."""
    from llie.batch import storage, storage_options

    given = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--storage-option"]
    given += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--storage-option=")]
    found = [value for item in given for key, _, value in [item.partition("=")] if storage_options.is_credential(key)]
    return (*storage.url_secrets(*argv), *found)


def one_line(exc: BaseException, argv: Sequence[str]) -> str:
    """The error as one line, without the credentials given on the command line."""
    from llie.batch import storage

    reason = storage.describe_error(exc, argument_secrets(argv))
    return f"cannot reach the storage: {reason}" if storage.is_unreachable(exc) else reason


def run_reporting_errors(command: click.Command, argv: Sequence[str] | None = None) -> None:
    """``command`` as the console entry point: an unexpected exception ends it with one line and exit code 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        command.main(args=argv, prog_name="llie")
    except Exception as exc:
        if debugging():
            raise
        click.echo(f"Error: {one_line(exc, argv)}", err=True)
        sys.exit(1)
