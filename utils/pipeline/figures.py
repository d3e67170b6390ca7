"""A metric written for reading, as the run report and every notebook's last cell show it: three significant digits,
an interval as ``0.48 [0.35, 0.61]``, a mapping as ``key value, …``, a long list summarized; never raw JSON."""

from __future__ import annotations

import math
from typing import Any

from utils.pipeline.page import Block, Heading, Table, to_markdown

CELL_WIDTH = 100  # characters: a longer cell is cut, with "…"
VALUE_KEYS = ("rate", "rating", "value", "mean", "lc_win_rate", "win_rate", "gain")


def _number(value: float) -> str:
    """Three significant digits; whole numbers from 100 up, thousands separated."""
    if value != value:  # NaN
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _interval(value: dict[str, Any]) -> str | None:
    """``{"rate": 0.048, "ci": [0.0, 0.61], ...}`` as ``0.048 [0.000, 0.610]``: three significant digits of the largest
    of the three, the same decimals for all; None for a dict that is not an estimate with its interval."""
    ci = value.get("ci")
    key = next((k for k in VALUE_KEYS if isinstance(value.get(k), (int, float)) and not isinstance(value.get(k), bool)), None)
    if key is None or not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci)):
        return None
    numbers = [float(value[key]), float(ci[0]), float(ci[1])]
    if any(x != x for x in numbers):
        return "–"
    largest = max(abs(x) for x in numbers)
    decimals = 0 if largest >= 100 else 2 - math.floor(math.log10(largest)) if largest > 0 else 2
    a, lo, hi = (f"{x:,.{decimals}f}" for x in numbers)
    return f"{a} [{lo}, {hi}]"


def cut(text: str, width: int = CELL_WIDTH) -> str:
    """At most ``width`` characters, cut at a word or separator with "…"."""
    if len(text) <= width:
        return text
    head = text[: width - 1]
    space = max(head.rfind(" "), head.rfind(","), head.rfind(";"))
    return (head[:space] if space > width // 2 else head).rstrip(" ,;") + " …"


def fmt(value: Any) -> str:
    """One metric value as short readable text: numbers to three significant digits, intervals as ``x [lo, hi]``,
    a mapping as ``key value, …``, long lists summarized; never JSON."""
    if value is None:
        return "–"  # write_metrics stores NaN/inf as null: "not defined"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            return f"{len(value)} rows"
        if len(value) > 6:
            return f"{len(value)} values: {fmt(value[0])} … {fmt(value[-1])}"
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        interval = _interval(value)
        if interval is not None:
            return interval
        return cut(", ".join(f"{k} {fmt(v) if not isinstance(v, dict) else '(' + fmt(v) + ')'}" for k, v in value.items()))
    return cut(str(value))


def is_rows(value: Any) -> bool:
    """A list of row dicts (``[{column: value}]``): shown as a table, not as "N rows"."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def is_scalar(value: Any) -> bool:
    return not isinstance(value, dict) and not is_rows(value)


def _is_table(value: dict[str, Any]) -> bool:
    """A dict of dicts whose cells are values, intervals or flat mappings (not deeper records): rows × columns."""
    def flat(x: Any) -> bool:
        return not isinstance(x, dict) or all(not isinstance(y, dict) for y in x.values())

    return bool(value) and all(isinstance(v, dict) and all(flat(x) for x in v.values()) for v in value.values())


def metric_blocks(metrics: dict[str, Any], prefix: str = "") -> list[Block]:
    """Scalars in one figure/value table; a dict of dicts as a table (rows × columns), a list of row dicts as a table,
    a dict of deeper records (e.g. one per judge) as one section each, any other dict as a figure/value table."""
    blocks: list[Block] = []
    scalars = [[k, fmt(v)] for k, v in metrics.items() if is_scalar(v) and not _interval_dict(v)]
    if scalars:
        blocks.append(Table(["figure", "value"], scalars))
    for key, value in metrics.items():
        if is_scalar(value) and not _interval_dict(value):
            continue
        title = f"{prefix}{key}"
        if _interval_dict(value):
            blocks += [Heading(3, title), Table(["figure", "value"], [[key, fmt(value)]])]
        elif is_rows(value):
            columns = list(dict.fromkeys(c for row in value for c in row))
            blocks += [Heading(3, title), Table(columns, [[fmt(row.get(c)) for c in columns] for row in value])]
        elif _is_table(value):
            columns = list(dict.fromkeys(c for row in value.values() for c in row))
            # A square table (win rates: player × player) reads best with columns in the rows' order.
            columns = [r for r in value if r in columns] + [c for c in columns if c not in value]
            blocks += [Heading(3, title), Table([""] + columns, [[name] + [fmt(row.get(c)) for c in columns] for name, row in value.items()])]
        elif value and all(isinstance(v, dict) for v in value.values()):
            for name, record in value.items():  # records holding tables of their own: a section each
                blocks += [Heading(3, f"{title}: {name}")] + metric_blocks(record, prefix=f"{title}: {name}: ")
        else:
            blocks += [Heading(3, title), Table(["figure", "value"], [[k, fmt(v)] for k, v in value.items()])]
    return blocks


def _interval_dict(value: Any) -> bool:
    return isinstance(value, dict) and _interval(value) is not None


def key_figures(metrics: dict[str, Any]) -> Any:
    """A stage's own figures (its ``metrics.json`` scalars) as a small table, formatted as the report formats them:
    the last output of each stage notebook."""
    from IPython.display import Markdown

    rows = [[k, fmt(v)] for k, v in metrics.items() if is_scalar(v) and not isinstance(v, (list, tuple))]
    return Markdown(to_markdown([Table(["figure", "value"], rows)]))
