"""A page built once as blocks (headings, paragraphs, bullet lists, tables, images, folds) and rendered twice.

Markdown with relative links, for reading beside the run (and on GitHub); one self-contained HTML file, plots
embedded, that opens in a browser offline, to mail, upload or project. A :class:`Fold` is a section a reader
opens when they want the detail: ``<details>`` in the HTML, a plain section in the Markdown.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

EMBED_LIMIT = 3_000_000  # bytes: bigger plots are linked from the HTML rather than embedded


@dataclass
class Link:
    text: str
    href: str


Inline = Union[str, Link]


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    parts: list[Inline]


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    alt: str
    path: Path  # relative to the page's folder


@dataclass
class Fold:
    """A section folded away in the HTML: its heading is the summary a reader clicks."""

    heading: Heading
    blocks: list["Block"] = field(default_factory=list)


Block = Union[Heading, Paragraph, Bullets, Table, Image, Fold]


# ---------------------------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    return " ".join(text.splitlines()).replace("|", "\\|")  # a row is one line


def _md_block(b: Block) -> str:
    if isinstance(b, Heading):
        return "#" * b.level + " " + b.text
    if isinstance(b, Paragraph):
        return "".join(p if isinstance(p, str) else f"[{p.text}]({p.href})" for p in b.parts)
    if isinstance(b, Bullets):
        return "\n".join(f"* {item}" for item in b.items)
    if isinstance(b, Table):
        lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        return "\n".join(lines)
    if isinstance(b, Image):
        return f"![{b.alt}]({b.path.as_posix()})"
    return "\n\n".join([_md_block(b.heading)] + [_md_block(x) for x in b.blocks])


def to_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(_md_block(b) for b in blocks) + "\n"


# ---------------------------------------------------------------------------------------------- HTML

CSS = """body{font-family:system-ui,sans-serif;max-width:78rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5rem 0 1.5rem}h2{border-bottom:1px solid #ddd}
details{margin:.4rem 0;border:1px solid #e3e3e3;border-radius:4px;padding:.2rem .8rem}
summary{cursor:pointer;font-weight:600;padding:.3rem 0}summary h2,summary h3{display:inline;border:0;font-size:1.1rem}
.wide{overflow-x:auto}.short{white-space:nowrap}.ci{color:#666;font-size:.85em}"""

INTERVAL = re.compile(r"^(\S+) (\[[^\[\]]+\])$")  # "1071 [1033, 1108]": an estimate and its interval
SHORT_CELL = 40  # characters: a number, a name, an interval; longer text may wrap


def _html_cell(text: str) -> str:
    """A table cell: an estimate above its interval (smaller, grey), so a column of them reads down at a glance and
    never breaks mid-interval; short cells on one line, long text wrapped."""
    esc = html.escape
    interval = INTERVAL.match(text)
    if interval:
        return f'<td class="short">{esc(interval[1])}<br><span class="ci">{esc(interval[2])}</span></td>'
    return f'<td class="short">{esc(text)}</td>' if len(text) <= SHORT_CELL else f"<td>{esc(text)}</td>"


def _html_block(b: Block, folder: Path) -> str:
    esc = html.escape
    if isinstance(b, Heading):
        return f"<h{b.level}>{esc(b.text)}</h{b.level}>"
    if isinstance(b, Paragraph):
        return "<p>" + "".join(esc(p) if isinstance(p, str) else f'<a href="{esc(p.href)}">{esc(p.text)}</a>' for p in b.parts) + "</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in b.items) + "</ul>"
    if isinstance(b, Table):
        head = "".join(f"<th>{esc(h)}</th>" for h in b.header)
        rows = "".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in b.rows)
        return f'<div class="wide"><table><tr>{head}</tr>{rows}</table></div>'
    if isinstance(b, Image):
        src = b.path.as_posix()
        data = (folder / b.path).read_bytes()
        if len(data) <= EMBED_LIMIT:
            src = "data:image/png;base64," + base64.b64encode(data).decode()
        return f'<figure><img src="{esc(src)}" alt="{esc(b.alt)}"><figcaption>{esc(b.alt)}</figcaption></figure>'
    inner = "\n".join(_html_block(x, folder) for x in b.blocks)
    return f"<details><summary>{_html_block(b.heading, folder)}</summary>\n{inner}\n</details>"


def to_html(blocks: list[Block], folder: Path) -> str:
    """One self-contained page: plots embedded as data URIs (linked instead when very large); ``folder`` is where the
    images' relative paths start."""
    title = blocks[0].text if blocks and isinstance(blocks[0], Heading) else "Report"
    body = "\n".join(_html_block(b, folder) for b in blocks)
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>\n'
            f"<body>\n{body}\n</body></html>\n")
