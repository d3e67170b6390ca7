"""Tables and plots of stage 05 (and the markdown tables every notebook shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

def sample_table(
    prompts: Mapping[str, str], answers: Mapping[str, Mapping[str, Sequence[str]]], scores: Mapping[str, Mapping[str, Sequence[float]]], keys: Sequence[str], width: int = 300
) -> list[dict[str, str]]:
    """Rows for a side-by-side table: the prompt, then each player's first answer with its reward."""
    rows = []
    for key in keys:
        row = {"prompt": _clip(prompts[key], width)}
        for player, by_prompt in answers.items():
            if key in by_prompt and by_prompt[key]:
                row[player] = f"[{scores[player][key][0]:+.2f}] {_clip(by_prompt[key][0], width)}"
        rows.append(row)
    return rows


def quote(text: str) -> str:
    """``text`` as a Markdown quote that keeps its line breaks (two trailing spaces) and shows markup as text."""
    lines = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").splitlines() or [""]
    return "\n".join(f"> {line}  " for line in lines)


def sample_blocks(prompts: Mapping[str, str], answers: Mapping[str, Mapping[str, Sequence[str]]],
                  scores: Mapping[str, Mapping[str, Sequence[float]]], keys: Sequence[str], players: Sequence[str]) -> str:
    """A few prompts, each followed by a few players' first answers, whole and with their line breaks, the judge's
    reward beside each name: what the numbers summarise, readable in a notebook (Markdown)."""
    parts = []
    for i, key in enumerate(keys, 1):
        parts.append(f"**Prompt {i}**\n\n{quote(prompts[key])}")
        for player in players:
            if answers.get(player, {}).get(key):
                parts.append(f"*{player}* [{scores[player][key][0]:+.2f}]\n\n{quote(answers[player][key][0])}")
        parts.append("---")
    return "\n\n".join(parts) + "\n"


def featured_players(players: Sequence[str], best_of: Mapping[str, int]) -> list[str]:
    """The players a reader compares first: SFT, each trained model (DPO, PPO, RLOO, in that order where they ran), and
    the largest best-of-n, of the first sampling preset."""
    preset = next((p[len("sft ("):-1] for p in players if p.startswith("sft (") and p.endswith(")")), None)
    if preset is None:
        return list(players)[:4]
    chosen = [f"{m} ({preset})" for m in ("sft", "dpo", "ppo", "rloo") if f"{m} ({preset})" in players]
    best = [p for p in best_of if p.endswith(f"({preset})")]
    return chosen + ([max(best, key=best_of.get)] if best else [])


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of ``{column: value}`` as a Markdown table; a cell's line breaks become spaces (a row is one line)."""
    from utils.pipeline.page import Table, to_markdown

    columns = list(dict.fromkeys(c for r in rows for c in r))
    return to_markdown([Table(columns, [[str(r.get(c, "")) for c in columns] for r in rows])])


def plot_distributions(values: Mapping[str, Sequence[float]], xlabel: str, ax=None):
    """One box per player (median, quartiles, whiskers), with the mean marked."""
    import matplotlib.pyplot as plt

    names = [n for n in values if len(values[n])]
    ax = ax or plt.subplots(figsize=(max(5, 1.3 * len(names)), 3.5))[1]
    ax.boxplot([list(values[n]) for n in names], showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=25, ha="right")
    ax.set_ylabel(xlabel)
    return ax


def plot_lengths_and_rewards(lengths: Mapping[str, Sequence[float]], rewards: Mapping[str, Sequence[float]], reward_label: str = "reward",
                             path: str | Path | None = None):
    """Two panels of box plots per player: answer length in words, and reward."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    plot_distributions(lengths, "answer length (words)", ax=axes[0])
    plot_distributions(rewards, reward_label, ax=axes[1])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
