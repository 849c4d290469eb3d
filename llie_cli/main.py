"""The ``llie`` console entry point: one click group holding every command (``llie run`` loaded when
asked for: ``llie_cli.commands.LazyGroup``)."""

from __future__ import annotations

from llie_cli.audit import audit
from llie_cli.calibrate import calibrate
from llie_cli.commands import cli
from llie_cli.errors import run_reporting_errors
from llie_cli.train import train

cli.add_command(audit)
cli.add_command(calibrate)
cli.add_command(train)

__all__ = ["cli", "main"]


def main() -> None:
    from llie import allocator

    allocator.settle()  # photo after photo without glibc mapping and unmapping the temporaries
    run_reporting_errors(cli)
