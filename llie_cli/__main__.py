"""``python -m llie_cli``: the ``llie`` command."""

from llie_cli.main import main

main()
