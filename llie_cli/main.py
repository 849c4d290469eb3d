"""The ``llie`` console entry point: one click group holding every command."""

from __future__ import annotations

from llie_cli.audit import audit
from llie_cli.commands import cli
from llie_cli.run import run_command

cli.add_command(audit)
cli.add_command(run_command)

__all__ = ["cli", "main"]


def main() -> None:
    cli()
