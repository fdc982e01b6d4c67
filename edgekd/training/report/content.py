"""What a report is made of: sections holding paragraphs, tables and figures.

One structure, two renderings (HTML and Markdown), so the two files always say the same.
Tables are the Markdown that `edgekd.tables.format_table` prints (what `eval` and `bench`
print on a terminal); the HTML page reads their cells back.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field


@dataclass
class Text:
    """One paragraph; `code` spans in backticks."""

    text: str
    kind: str = "text"


@dataclass
class Table:
    """A table as `format_table` prints it, with an optional line above it."""

    markdown: str
    caption: str = ""
    kind: str = "table"

    @property
    def headers(self) -> list[str]:
        return _cells(self.markdown.splitlines()[0])

    @property
    def rows(self) -> list[list[str]]:
        return [_cells(line) for line in self.markdown.splitlines()[2:]]

    @property
    def numeric(self) -> list[bool]:
        """Per column: every cell a number (or '-'), so the page aligns it to the right."""
        rows = self.rows
        return [
            i > 0 and all(_NUMBER.match(r[i]) for r in rows if i < len(r) and r[i])
            for i in range(len(self.headers))
        ]


# A table cell that is a figure: 12.34, +1.67, 7.15e-07, 0.02M, [-5.00, +15.00], 6 / 3, -.
_NUMBER = re.compile(r"^(-|[-+]?[\d.,]+(e[-+]?\d+)?[%MKx]?|\[[-+\d., ]+\]|\d+ / \d+)$")


def _cells(line: str) -> list[str]:
    """The cells of one `| a | b |` line, without their padding."""
    return [c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split(" | ")]


@dataclass
class Figure:
    """A PNG figure: written beside the Markdown as `name`, inlined into the HTML."""

    name: str
    png: bytes
    caption: str
    alt: str = ""  # a few words for the image itself; the caption says the rest
    kind: str = "figure"

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


Block = Text | Table | Figure


@dataclass
class Section:
    """A titled part of the report; `note` says why it is left out (then it has no blocks)."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    note: str = ""

    @property
    def figures(self) -> list[Figure]:
        return [b for b in self.blocks if isinstance(b, Figure)]


@dataclass
class Report:
    """The whole page: a title, lines under it, the sections, and the recipe as run."""

    title: str
    facts: list[str]
    sections: list[Section]
    recipe_yaml: str = ""

    @property
    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]


def blocks_from_text(text: str) -> list[Block]:
    """A terminal report (lines and `format_table` tables) as blocks: each run of `|` lines
    is a table, each other non-empty line a paragraph."""
    blocks: list[Block] = []
    table: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            blocks.append(Table("\n".join(table)))
            table = []
        if line.strip():
            blocks.append(Text(line.strip()))
    return blocks
