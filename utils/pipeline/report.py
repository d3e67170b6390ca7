"""The run's report, ``runs/<profile>/report.md`` and ``report.html``: the answer first, then every stage's detail.

The first screen says what was run (profile, models, data, commit, machine, date, time) and shows the one results
table (stage 05's players under each judge: Elo, win rate against SFT, length-controlled, reward, words, KL), the
RL stages' check on fixed prompts and the reward-against-KL figure, every abbreviation explained beside it. Then a
few figures from each stage, then each stage's whole ``metrics.json`` (folded away in the HTML).

The runner writes it at the end of every run, whatever ran: stages that are missing, failed or write metrics this
module has never heard of are reported as they are, never an error. Numbers are written for reading (three
significant digits, an interval as ``0.48 [0.35, 0.61]``); no cell holds raw JSON.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Iterable

from utils.pipeline.artifacts import METRICS_FILE
from utils.pipeline.figures import cut, fmt, is_rows, is_scalar, metric_blocks
from utils.pipeline.machine import is_busy
from utils.pipeline.page import Block, Bullets, Fold, Heading, Image, Inline, Link, Paragraph, Table, to_html, to_markdown
from utils.pipeline.profile import REPO_ROOT, load_profile, profile_path
from utils.pipeline.progress import format_seconds
from utils.pipeline.stage_record import STAGE_FILE  # the runner's record of a finished stage
from utils.pipeline.stages import DPO, EVALUATE, EXPLORE, PPO, REWARD, RLOO, SFT

STAGE_DIR = re.compile(r"^\d\d_[A-Za-z0-9_]+$")
# Stage 05's table columns the headline keeps (the rest stay in 05's section): players × judges, then judge-free.
HEADLINE_COLUMNS = ("player", "Elo (", "win vs SFT", "LC win vs SFT", "reward (", "words", "KL to SFT")

# A few figures worth seeing before the detail, where the stage wrote them: (stage, key, label).
GLANCE = [
    (EXPLORE, "trees", "trees read"),
    (EXPLORE, "sft_threads", "SFT threads"),
    (EXPLORE, "rm_pairs", "reward-model pairs"),
    (SFT, "eval_loss_before", "SFT held-out loss before"),
    (SFT, "eval_loss_after", "SFT held-out loss after"),
    (REWARD, "eval_accuracy", "reward model pairwise accuracy (held-out OASST pairs)"),
    (REWARD, "length_baseline_accuracy", "the longer reply wins: its accuracy on the same pairs"),
    (REWARD, "hh_accuracy", "HH-RLHF harmless accuracy"),
    (REWARD, "judge_eval_accuracy", "judge (second reward model) pairwise accuracy"),
    (REWARD, "proxy_judge_agreement", "proxy and judge agree on held-out pairs"),
    (DPO, "heldout_accuracy_after", "DPO implicit-reward accuracy on held-out pairs (0.5 before)"),
]


# ---------------------------------------------------------------------------------------------- reading the run


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path.name} could not be read ({type(e).__name__}: {e})"
    if not isinstance(data, dict):
        return None, f"{path.name} does not hold a JSON object"
    return data, None


def _stage_json(run_dir: Path, stage: str, name: str) -> dict[str, Any]:
    path = run_dir / stage / name
    data, _ = _read_json(path) if path.exists() else (None, None)
    return data or {}


def stage_names(run_dir: Path, expected: Iterable[str] | None = None) -> list[str]:
    """Stages found in the run dir (finished or failed) and the ``expected`` ones (default: the kit's notebooks)."""
    found = {p.name.removesuffix(".failed") for p in run_dir.iterdir() if p.is_dir()} if run_dir.exists() else set()
    if expected is None:
        expected = [p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb")]
    return sorted(s for s in found | set(expected) if STAGE_DIR.match(s))


def _rel(path: Path, run_dir: Path) -> str:
    return path.relative_to(run_dir).as_posix()


# ---------------------------------------------------------------------------------------------- what was run


def _joined(values: dict[str, list[str]]) -> str:
    """``{"abc1234": [stages]}`` as ``abc1234`` when one value, else each with its stages."""
    if len(values) == 1:
        return next(iter(values))
    return "; ".join(f"{v} ({', '.join(s.split('_', 1)[-1] for s in stages)})" for v, stages in values.items())


def run_rows(run_dir: Path, stages: list[str]) -> list[list[str]]:
    """The "what was run" table: profile, models, data, commit, machine, finished, time."""
    records = {s: _stage_json(run_dir, s, STAGE_FILE) for s in stages}
    records = {s: r for s, r in records.items() if r}
    rows = []
    if profile_path(run_dir.name).exists():
        try:
            profile = load_profile(run_dir.name)
            rows.append(["profile", f"{profile.name} ({profile.path.relative_to(REPO_ROOT).as_posix()}): {profile.description}"])
        except (ValueError, FileNotFoundError):
            pass
    params = {s: r.get("parameters") or {} for s, r in records.items()}
    models = []
    if SFT in params:
        base = params[SFT].get("base_model")
        quant = params[SFT].get("quantization")
        models.append(f"policy {'the kit-built tiny GPT-NeoX' if base == 'tiny' else base}" + (f" ({quant})" if quant and quant != "none" else ""))
    if REWARD in params:
        models.append(f"reward models (proxy and judge) on {params[REWARD].get('base_model')}")
    if models:
        rows.append(["models", "; ".join(models)])
    explore = _stage_json(run_dir, EXPLORE, METRICS_FILE)
    data = params.get(EXPLORE) or params.get(SFT) or {}
    if data.get("train_paths"):
        text = f"train {', '.join(data['train_paths'])}; held out {', '.join(data.get('heldout_paths') or [])}"
        if explore:
            text += f" ({fmt(explore.get('trees'))} trees, {fmt(explore.get('messages'))} messages read, {fmt(explore.get('kept'))} kept)"
        rows.append(["data", text])
    commits: dict[str, list[str]] = {}
    for s, r in records.items():
        commits.setdefault(r.get("commit") or "not recorded", []).append(s)
    if commits:
        rows.append(["commit", _joined(commits)])
    machines: dict[str, list[str]] = {}
    for s, r in records.items():
        m = r.get("machine") or {}
        cpu = f" ({m['cpu']})" if m.get("cpu") else ""
        text = (f"{m.get('cores')} cores{cpu}, {m.get('threads')} threads, " + (f"GPU {m['gpu']}" if m.get("gpu") else "no GPU")
                if m else "not recorded")
        machines.setdefault(text, []).append(s)
    if machines:
        rows.append(["machine", _joined(machines)])
    busy = [f"{s} ({r['machine']['others_running']:.1f} threads of other work running as it started)" for s, r in records.items()
            if is_busy((r.get("machine") or {}).get("others_running"), (r.get("machine") or {}).get("cores") or 1)]
    if busy:
        rows.append(["shared machine", "other work was running when these started, so their times are long: " + ", ".join(busy)])
    finished = sorted(r["finished"] for r in records.values() if r.get("finished"))
    if finished:
        rows.append(["finished", finished[-1].replace("T", " ")])
    seconds = {s: r["seconds"] for s, r in records.items() if isinstance(r.get("seconds"), (int, float))}
    if seconds:
        each = ", ".join(f"{s.split('_', 1)[1]} {format_seconds(t)}" for s, t in seconds.items())
        rows.append(["time", f"{format_seconds(sum(seconds.values()))}, the stages one after another ({each})"])
    return rows


# ---------------------------------------------------------------------------------------------- the answer


def _preset_text(name: str, preset: dict[str, Any]) -> str:
    parts = [f"temperature {fmt(preset.get('temperature'))}"] if preset.get("do_sample", True) else ["greedy"]
    parts += [f"{label} {fmt(preset[k])}" for k, label in (("top_k", "top-k"), ("top_p", "top-p"), ("repetition_penalty", "repetition penalty"))
              if preset.get(k) not in (None, 0, 1.0)]
    return f"({name}): replies sampled with {', '.join(parts)}, at most {preset.get('max_new_tokens')} new tokens"


TRAINED_PLAYERS = {  # a player of stage 05 -> what trained it: (stage, method)
    "sft": (SFT, "supervised fine-tuning on the OASST replies, from base"),
    "dpo": (DPO, "DPO on the ranked sibling replies"),
    "ppo": (PPO, "the kit's PPO against the proxy"),
    "rloo": (RLOO, "trl's RLOO against the proxy"),
}


def legend(evaluation: dict[str, Any], lead: str | None, rl_algorithm: str | None = None) -> list[str]:
    """What each abbreviation in the results means, from the run's own metrics (``rl_algorithm``: 04_rloo's)."""
    lines = [_preset_text(name, preset) for name, preset in (evaluation.get("sampling") or {}).items() if isinstance(preset, dict)]
    shown = {str(row.get("player", "")).split(" (")[0] for row in evaluation.get("table") or [] if isinstance(row, dict)}
    trained = []
    for player, (stage, method) in TRAINED_PLAYERS.items():
        if player in shown:
            if player == "rloo" and rl_algorithm == "grpo":
                method = "trl's GRPO against the proxy (its algorithm parameter)"
            trained.append(f"{player}: stage {stage}, {method}" + ("" if player == "sft" else ", from sft"))
    if trained:
        lines.append("; ".join(trained) + ("; base: the model SFT starts from" if "base" in shown else ""))
    for player, n in (evaluation.get("best_of_n") or {}).items():
        lines.append(f"{player.split(' ')[0]}: of {n} such replies to a prompt, the one the proxy scores highest (no training; "
                     f"{n}× the sampling)")
    external = evaluation.get("external_players") or {}
    if external:
        names = ", ".join(p.split(" (")[0] for p in external)
        counts = sorted(set(external.values()))
        lines.append(f"{names}: OpenAssistant's own SFT models, their published replies to the same prompts "
                     f"({'-'.join(str(c) for c in (counts[0], counts[-1])[: len(counts)])} of them)")
    judges = evaluation.get("judges") or {}
    trained = [j for j, v in judges.items() if isinstance(v, dict) and v.get("trained_against")]
    if trained:
        lines.append(f"{', '.join(trained)}*: the reward model the RL stages and best-of-n optimise: its scores of them flatter them")
    lines += [f"{j}: an independent reward model, trained on preference trees the proxy never saw" for j in judges if j not in trained]
    lines.append("x [lo, hi]: the estimate and its 95% bootstrap interval over prompts")
    lines.append("win vs SFT: the share of games against SFT won, under "
                 f"{f'the independent judge ({lead})' if lead else 'the first judge'}; LC: length-controlled, the win rate the "
                 "player would have if its answers were as long as SFT's")
    lines.append("words: mean answer length; KL to SFT: nats per reply (≤: best-of-n's analytic bound)")
    return lines


def results_blocks(run_dir: Path) -> list[Block]:
    """The answer: stage 05's players table (headline columns), the RL check, reward against KL, and the legend."""
    evaluation = _stage_json(run_dir, EVALUATE, METRICS_FILE)
    blocks: list[Block] = [Heading(2, "Results")]
    table = evaluation.get("table")
    if not is_rows(table):
        return blocks + [Paragraph([f"Stage {EVALUATE} has not run (or wrote no table): each stage's own figures follow."])]
    columns = [c for c in dict.fromkeys(k for row in table for k in row) if c.startswith(HEADLINE_COLUMNS)]
    blocks.append(Table(columns, [[cut(str(row.get(c, "–"))) for c in columns] for row in table]))
    judges = evaluation.get("judges") or {}
    lead = next((j for j, v in judges.items() if isinstance(v, dict) and not v.get("trained_against")), None)
    blocks.append(Bullets(legend(evaluation, lead, _stage_json(run_dir, RLOO, METRICS_FILE).get("algorithm"))))
    checks = [c for c in evaluation.get("rl_check") or [] if isinstance(c, dict) and "player" in c]
    if checks:
        columns = list(dict.fromkeys(k for c in checks for k in c))
        blocks += [Paragraph(["RL on fixed held-out prompts, each stage's last snapshot against SFT (paired by prompt, "
                              "± one standard error; name@N: the policy after N updates; ≥ best_of_2: best-of-2's gain, "
                              "then the snapshot's gain minus it, paired by prompt):"]),
                   Table(columns, [[cut(str(c.get(k, "") or "–")) for k in columns] for c in checks])]
    figure = run_dir / EVALUATE / "reward_vs_kl.png"
    if figure.exists():
        blocks.append(Image("reward against KL to SFT: proxy and judge, each RL snapshot and best-of-n", figure.relative_to(run_dir)))
    return blocks


def glance_blocks(run_dir: Path) -> list[Block]:
    rows = []
    for stage, key, label in GLANCE:
        metrics = _stage_json(run_dir, stage, METRICS_FILE)
        if key in metrics and is_scalar(metrics[key]):
            rows.append([label, fmt(metrics[key]), stage])
    return [Heading(2, "Each stage at a glance"), Table(["figure", "value", "stage"], rows)] if rows else []


# ---------------------------------------------------------------------------------------------- the detail


def stage_blocks(run_dir: Path, stage: str) -> Fold:
    fold = Fold(Heading(2, stage))
    blocks = fold.blocks
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
        return fold

    record, _ = _read_json(folder / STAGE_FILE) if (folder / STAGE_FILE).exists() else (None, None)
    if record:
        took = record.get("seconds")
        blocks.append(Paragraph([f"Finished {str(record.get('finished', '?')).replace('T', ' ')}"
                                 + (f" in {format_seconds(float(took))}." if took is not None else ".")]))
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
    return fold


def build(run_dir: Path, expected: Iterable[str] | None = None) -> list[Block]:
    """The whole page as blocks."""
    stages = stage_names(run_dir, expected)
    blocks: list[Block] = [Heading(1, f"Run report: {run_dir.name}")]
    rows = run_rows(run_dir, stages)
    if rows:
        blocks.append(Table(["run", ""], rows))
    blocks += results_blocks(run_dir)
    blocks += glance_blocks(run_dir)
    blocks.append(Paragraph([f"Report written {time.strftime('%Y-%m-%d %H:%M')} from {run_dir}. "
                             "Each stage's whole metrics follow (click a stage to open it in the HTML)."]))
    blocks += [stage_blocks(run_dir, stage) for stage in stages]
    return blocks


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
