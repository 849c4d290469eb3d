"""The README as a user's guide: its command summary agrees with each command's --help, and its
relative links lead somewhere."""

from __future__ import annotations

import re

import click
import pytest

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _summary_block() -> str:
    section = README.split("\n## Commands\n", 1)[1]
    return re.search(r"```text\n(.*?)```", section, re.S).group(1)


def _summaries() -> dict[str, str]:
    """command name -> its synopsis in the README (continuation lines included)."""
    found: dict[str, str] = {}
    name = None
    for line in _summary_block().splitlines():
        match = re.match(r"llie (\S+)", line)
        if match:
            name = match.group(1)
            found[name] = ""
        if name:
            found[name] += " " + line
    return found


def _commands() -> dict[str, click.Command]:
    from llie_cli.main import cli

    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


def _help_options(command: click.Command) -> set[str]:
    """Every long option `--help` lists for ``command``, --help itself aside."""
    options = set()
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            options.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return options - {"--help"}


def test_the_readme_summarises_every_command():
    assert sorted(_summaries()) == sorted(_commands())


@pytest.mark.parametrize("name", sorted(_commands()))
def test_each_summary_lists_exactly_the_options_of_help(name):
    command, summary = _commands()[name], _summaries().get(name, "")
    written = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", summary))
    assert written == _help_options(command), (
        f"README's `llie {name}` summary: missing {sorted(_help_options(command) - written)}, "
        f"not in --help {sorted(written - _help_options(command))}"
    )
    arguments = [p.human_readable_name.upper() for p in command.params if isinstance(p, click.Argument)]
    assert summary.split()[2 : 2 + len(arguments)] == arguments


def test_the_readme_is_a_guide_and_its_links_resolve():
    assert len(README.splitlines()) <= 220  # the method and its evidence live in docs/
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (REPO / target).exists(), target
    for doc in ("method.md", "training.md", "benchmarks.md", "model-card.md"):
        text = (REPO / "docs" / doc).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert (REPO / "docs" / target).resolve().exists(), (doc, target)
