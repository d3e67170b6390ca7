"""The run's report: every stage's key figures and plots in one page, ``runs/<profile>/report.md`` and ``.html``.

The runner calls :func:`write_report` at the end of every run, whatever ran: stages that are missing,
failed or write metrics this module has never heard of are reported as they are, never an error.
The page is built once as a list of blocks (headings, paragraphs, tables, images) and rendered twice:
Markdown with relative links for reading beside the run, and one self-contained HTML file (plots
embedded) to mail or upload.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Union

from utils.pipeline.artifacts import METRICS_FILE
from utils.pipeline.profile import REPO_ROOT, load_profile, profile_path
from utils.pipeline.stage_record import STAGE_FILE  # the runner's record of a finished stage
from utils.pipeline.stages import DPO, EVALUATE, EXPLORE, PPO, REWARD, SFT

STAGE_DIR = re.compile(r"^\d\d_[A-Za-z0-9_]+$")
EMBED_LIMIT = 3_000_000  # bytes: bigger plots are linked from the HTML rather than embedded

# A few figures worth seeing before anything else, where the stage wrote them: (stage, key, label).
GLANCE = [
    (EXPLORE, "trees", "trees read"),
    (EXPLORE, "sft_threads", "SFT threads"),
    (EXPLORE, "rm_pairs", "reward-model pairs"),
    (SFT, "eval_loss_before", "SFT held-out loss before"),
    (SFT, "eval_loss_after", "SFT held-out loss after"),
    (REWARD, "eval_accuracy", "reward model pairwise accuracy"),
    (REWARD, "length_baseline_accuracy", "length baseline accuracy"),
    (REWARD, "hh_accuracy", "HH-RLHF harmless accuracy"),
    (REWARD, "judge_eval_accuracy", "judge (second reward model) pairwise accuracy"),
    (REWARD, "proxy_judge_agreement", "proxy and judge agree on held-out pairs"),
    (REWARD, "hh_weight", "weight of HH-RLHF harmless pairs in reward training"),
    (DPO, "heldout_accuracy_after", "DPO implicit-reward accuracy on held-out pairs (0.5 before)"),
    (DPO, "heldout_margin_after", "DPO implicit-reward margin on held-out pairs (0 before)"),
    (DPO, "train_seconds", "DPO training seconds"),
    (PPO, "reward_mean_first", "PPO reward, first update"),
    (PPO, "reward_mean_last", "PPO reward, last update"),
    (PPO, "kl_last", "PPO KL, last update"),
    (PPO, "kl_coef_last", "PPO KL coefficient β, last update"),
]


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
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    alt: str
    path: Path  # relative to the run dir


Block = Union[Heading, Paragraph, Table, Image]


# ---------------------------------------------------------------------------------------------- values


def fmt(value: Any) -> str:
    """One metric value as short text: 4 significant digits, thousands separated, long lists summarized."""
    if value is None:
        return "–"  # write_metrics stores NaN/inf as null: "not defined"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        if len(value) > 6:
            return f"{len(value)} values: {fmt(value[0])} … {fmt(value[-1])}"
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        text = json.dumps(value, default=str)
        return text if len(text) <= 80 else text[:77] + "…"
    return str(value)


def _is_rows(value: Any) -> bool:
    """A list of row dicts (``[{column: value}]``): shown as a table, not as "N values"."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, dict) and not _is_rows(value)


def metric_blocks(metrics: dict[str, Any], prefix: str = "") -> list[Block]:
    """Scalars in one figure/value table; each dict as its own table (a dict of dicts: rows × columns), a list of
    row dicts as a table, and a dict of such nested records (e.g. one per judge) as one section each."""
    blocks: list[Block] = []
    scalars = [[k, fmt(v)] for k, v in metrics.items() if _is_scalar(v)]
    if scalars:
        blocks.append(Table(["figure", "value"], scalars))
    for key, value in metrics.items():
        if _is_scalar(value):
            continue
        title = f"{prefix}{key}"
        if _is_rows(value):
            columns = list(dict.fromkeys(c for row in value for c in row))
            blocks += [Heading(3, title), Table(columns, [[fmt(row.get(c)) for c in columns] for row in value])]
        elif value and all(isinstance(v, dict) for v in value.values()) and any(
            isinstance(x, dict) and x and all(isinstance(y, dict) for y in x.values()) for v in value.values() for x in v.values()
        ):
            for name, record in value.items():  # records holding tables of their own: a section each
                blocks += [Heading(3, f"{title}: {name}")] + metric_blocks(record, prefix=f"{title}: {name}: ")
        elif value and all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(c for row in value.values() for c in row))
            # A square table (win rates: player × player) reads best with columns in the rows' order.
            columns = [r for r in value if r in columns] + [c for c in columns if c not in value]
            blocks += [Heading(3, title), Table([""] + columns, [[name] + [fmt(row.get(c)) for c in columns] for name, row in value.items()])]
        else:
            blocks += [Heading(3, title), Table(["figure", "value"], [[k, fmt(v)] for k, v in value.items()])]
    return blocks


# ---------------------------------------------------------------------------------------------- stages


def stage_names(run_dir: Path, expected: Iterable[str] | None = None) -> list[str]:
    """Stages found in the run dir (finished or failed) and the ``expected`` ones (default: the kit's notebooks)."""
    found = {p.name.removesuffix(".failed") for p in run_dir.iterdir() if p.is_dir()} if run_dir.exists() else set()
    if expected is None:
        expected = [p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb")]
    return sorted(s for s in found | set(expected) if STAGE_DIR.match(s))


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path.name} could not be read ({type(e).__name__}: {e})"
    if not isinstance(data, dict):
        return None, f"{path.name} does not hold a JSON object"
    return data, None


def stage_blocks(run_dir: Path, stage: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, stage)]
    folder, failed = run_dir / stage, run_dir / f"{stage}.failed"
    if failed.is_dir():
        notebooks = sorted(failed.glob("*.ipynb"))
        parts: list[Inline] = ["Failed in the last run"]
        if notebooks:
            parts += ["; the executed notebook shows where: ", Link(notebooks[0].name, _rel(notebooks[0], run_dir))]
        blocks.append(Paragraph(parts + ["."]))
    if not folder.is_dir():
        if not failed.is_dir():
            blocks.append(Paragraph(["Not run."]))
        return blocks

    record, _ = _read_json(folder / STAGE_FILE) if (folder / STAGE_FILE).exists() else (None, None)
    if record:
        took = record.get("seconds")
        blocks.append(Paragraph([f"Finished {record.get('finished', '?')}" + (f" in {fmt(float(took))} s." if took is not None else ".")]))
    notebooks = sorted(folder.glob("*.ipynb"))
    if notebooks:
        blocks.append(Paragraph(["Executed notebook: ", Link(notebooks[0].name, _rel(notebooks[0], run_dir))]))

    if (folder / METRICS_FILE).exists():
        metrics, problem = _read_json(folder / METRICS_FILE)
        blocks += metric_blocks(metrics) if metrics is not None else [Paragraph([problem])]
    else:
        blocks.append(Paragraph([f"No {METRICS_FILE}."]))

    for png in sorted(folder.rglob("*.png")):
        blocks.append(Image(png.stem.replace("_", " "), png.relative_to(run_dir)))
    others = sorted(p for p in folder.iterdir() if p.suffix in (".md", ".csv", ".txt", ".jsonl") and not p.name.startswith("."))
    if others:
        parts = ["Files: "]
        for i, p in enumerate(others):
            parts += ([", "] if i else []) + [Link(p.name, _rel(p, run_dir))]
        blocks.append(Paragraph(parts))
    return blocks


def _rel(path: Path, run_dir: Path) -> str:
    return path.relative_to(run_dir).as_posix()


def glance_blocks(run_dir: Path) -> list[Block]:
    rows = []
    for stage, key, label in GLANCE:
        path = run_dir / stage / METRICS_FILE
        metrics, _ = _read_json(path) if path.exists() else (None, None)
        if metrics and key in metrics and _is_scalar(metrics[key]):
            rows.append([label, fmt(metrics[key]), stage])
    elo_path = run_dir / EVALUATE / METRICS_FILE
    evaluation, _ = _read_json(elo_path) if elo_path.exists() else (None, None)
    for name, judge in ((evaluation or {}).get("judges") or {}).items():
        elo = judge.get("elo") if isinstance(judge, dict) else None
        if isinstance(elo, dict) and elo and all(isinstance(v, dict) and v.get("rating") is not None for v in elo.values()):
            best = max(elo, key=lambda p: elo[p]["rating"])
            role = "PPO trained against it" if judge.get("trained_against") else "independent"
            rows.append([f"highest Elo, judge {name} ({role})", f"{best}: {fmt(elo[best]['rating'])}", EVALUATE])
    for check in (evaluation or {}).get("rl_check") or []:  # each RL stage's last snapshot on the fixed set
        if isinstance(check, dict) and "player" in check:
            verdicts = "; ".join(f"{k} {v}" for k, v in check.items() if k not in ("player",) and v)
            rows.append([f"RL on the fixed set: {check['player']}", verdicts, EVALUATE])
    return [Heading(2, "At a glance"), Table(["figure", "value", "stage"], rows)] if rows else []


def build(run_dir: Path, expected: Iterable[str] | None = None) -> list[Block]:
    """The whole page as blocks."""
    blocks: list[Block] = [Heading(1, f"Run report: {run_dir.name}")]
    intro = f"Generated {time.strftime('%Y-%m-%d %H:%M')} from {run_dir}."
    if profile_path(run_dir.name).exists():
        try:
            intro += f" Profile {run_dir.name}: {load_profile(run_dir.name).description}"
        except (ValueError, FileNotFoundError):
            pass  # the stage sections below still stand without the profile's description
    blocks.append(Paragraph([intro]))
    blocks += glance_blocks(run_dir)
    for stage in stage_names(run_dir, expected):
        blocks += stage_blocks(run_dir, stage)
    return blocks


# ---------------------------------------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            out.append("".join(p if isinstance(p, str) else f"[{p.text}]({p.href})" for p in b.parts))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            out.append(f"![{b.alt}]({b.path.as_posix()})")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5rem 0 1.5rem}h2{border-bottom:1px solid #ddd}"""


def to_html(blocks: list[Block], run_dir: Path) -> str:
    """One self-contained page: plots embedded as data URIs (linked instead when very large)."""
    esc = html.escape
    body = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append("<p>" + "".join(esc(p) if isinstance(p, str) else f'<a href="{esc(p.href)}">{esc(p.text)}</a>' for p in b.parts) + "</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif isinstance(b, Image):
            src = b.path.as_posix()
            data = (run_dir / b.path).read_bytes()
            if len(data) <= EMBED_LIMIT:
                src = "data:image/png;base64," + base64.b64encode(data).decode()
            body.append(f'<figure><img src="{esc(src)}" alt="{esc(b.alt)}"><figcaption>{esc(b.alt)}</figcaption></figure>')
    title = blocks[0].text if blocks and isinstance(blocks[0], Heading) else "Run report"
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style></head>\n'
            f"<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: str | Path, expected: Iterable[str] | None = None) -> Path:
    """Write ``<run_dir>/report.md`` and ``report.html``; returns the Markdown path.

    ``expected`` names stages to list as "not run" when absent (default: every notebook in notebooks/).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    blocks = build(run_dir, expected)
    md = run_dir / "report.md"
    md.write_text(to_markdown(blocks))
    (run_dir / "report.html").write_text(to_html(blocks, run_dir))
    return md
