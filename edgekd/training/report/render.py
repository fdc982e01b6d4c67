"""The report as one self-contained HTML page and as Markdown with PNGs beside it, from the
Jinja2 templates shipped in this package; every file is written atomically."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from edgekd import __version__, atomic
from edgekd.training.report.content import Report

HTML_TEMPLATE = "report.html.j2"
MARKDOWN_TEMPLATE = "report.md.j2"
_CODE = re.compile(r"`([^`]+)`")


def _template(jinja2: Any, name: str, *, html: bool) -> Any:
    """A template of this package, with the `code` filter: backticks to <code> in HTML."""
    env = jinja2.Environment(autoescape=html, keep_trailing_newline=True, lstrip_blocks=False,
                             undefined=jinja2.StrictUndefined)  # fmt: skip
    if html:
        from markupsafe import Markup, escape

        env.filters["code"] = lambda t: Markup(_CODE.sub(r"<code>\1</code>", str(escape(t))))
    else:
        env.filters["code"] = lambda t: t
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return env.from_string(text)


def render(report: Report, made: str) -> tuple[str, str]:
    """The HTML page (figures inlined as base64 PNG) and the Markdown (figures as files)."""
    import jinja2

    context = {"report": report, "version": __version__, "made": made}
    html = _template(jinja2, HTML_TEMPLATE, html=True).render(**context)
    markdown = _template(jinja2, MARKDOWN_TEMPLATE, html=False).render(**context)
    return html, re.sub(r"\n{3,}", "\n\n", markdown)


def write(report: Report, out_dir: Path, made: str) -> dict[str, Path]:
    """Write the figures, `report.md` and `report.html` into `out_dir`; their paths."""
    html, markdown = render(report, made)
    written: dict[str, Path] = {}
    for fig in report.figures:
        atomic.write_bytes(out_dir / fig.name, fig.png)
        written[fig.name] = out_dir / fig.name
    atomic.write_text(out_dir / "report.md", markdown)
    atomic.write_text(out_dir / "report.html", html)  # last: the page a reader opens
    written["report.md"] = out_dir / "report.md"
    written["report.html"] = out_dir / "report.html"
    return written
