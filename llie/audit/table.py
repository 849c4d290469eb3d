"""One small table, written three ways: aligned plain text, HTML and markdown.

Cells are plain text; each rendering escapes them as its format needs.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    """Rows of text cells under a header; an empty header makes a table of (label, value) rows."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    left: frozenset[int] = frozenset({0})  # columns aligned left; the others (numbers) right

    @classmethod
    def of(cls, header: Sequence[str], rows: Iterable[Sequence[object]], left: Iterable[int] = (0,)) -> Table:
        return cls(tuple(header), tuple(tuple(str(c) for c in r) for r in rows), frozenset(left))

    @classmethod
    def pairs(cls, rows: Iterable[tuple[str, object]]) -> Table:
        """(label, value) rows, both columns aligned left."""
        return cls.of(("", ""), rows, left=(0, 1))

    @property
    def headed(self) -> bool:
        return any(self.header)

    def text(self, indent: str = "") -> list[str]:
        """Aligned lines, columns two spaces apart; a header gets a rule of dashes below it."""
        lines = [*((self.header,) if self.headed else ()), *self.rows]
        widths = [max(len(c) for c in column) for column in zip(*lines)] if lines else []

        def line(cells: Sequence[str]) -> str:
            aligned = (c.ljust(w) if i in self.left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            return (indent + "  ".join(aligned)).rstrip()

        rule = [line(["-" * w for w in widths])] if self.headed else []
        return [line(lines[0]), *rule, *(line(r) for r in lines[1:])] if self.headed else [line(r) for r in lines]

    def html(self) -> str:
        def cell(tag: str, i: int, text: str) -> str:
            return f'<{tag} class="{"l" if i in self.left else ""}">{html.escape(text, quote=True)}</{tag}>'

        head = (
            "<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(self.header)) + "</tr></thead>"
            if self.headed
            else ""
        )
        body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in self.rows)
        return f"<table>{head}<tbody>{body}</tbody></table>"

    def markdown(self) -> list[str]:
        """A pipe table; a headerless one gets an empty header row (markdown wants one)."""

        def line(cells: Sequence[str]) -> str:
            return "|" + "".join(f" {markdown_cell(c)} |" if c else " |" for c in cells)

        return [line(self.header), "|" + "---|" * len(self.header), *(line(r) for r in self.rows)]


def markdown_cell(text: str) -> str:
    """``text`` safe inside a markdown table cell: no pipe, backslash or line break of its own."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
