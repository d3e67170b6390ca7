"""Stage 05's results: one table of every player under every judge, and the stage's metrics record.

The table has a row per player (the run's models under each sampling preset, and OpenAssistant's models
from their sampling reports) and, per judge, the Elo rating and mean reward with their intervals; then what
does not need a judge: reply length, KL to the SFT model and perplexity on held-out threads.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from utils.judges import Judge


def fmt_ci(mean: float | None, ci: Sequence[float] | None, digits: int = 3, signed: bool = True) -> str:
    """``+0.123 [+0.100, +0.150]``: a figure and its 95% interval, as the tables print them."""
    if mean is None or mean != mean:  # None or NaN
        return "–"
    spec = f"{'+' if signed else ''}.{digits}f"
    if not ci or any(c is None for c in ci):
        return format(mean, spec)
    return f"{format(mean, spec)} [{format(ci[0], spec)}, {format(ci[1], spec)}]"


def judge_label(name: str, judge: Judge) -> str:
    return f"{name}{'*' if judge.trained_against else ''}"


def results_rows(
    judges: Mapping[str, Judge],
    tournaments: Mapping[str, Any],
    summaries: Mapping[str, Mapping[str, Mapping[str, Any]]],
    extra: Mapping[str, Mapping[str, str]] | None = None,
) -> list[dict[str, str]]:
    """Rows of the results table, players ranked by the first independent judge's Elo.

    ``summaries[judge][player]`` are :func:`utils.evaluate.summarize` dicts; ``extra[player]`` adds columns
    (KL, perplexity, ...). A judge PPO was trained against is starred.
    """
    lead = next((j for j, judge in judges.items() if not judge.trained_against), next(iter(judges)))
    players = sorted(summaries[lead], key=lambda p: -tournaments[lead].elo[p].rating if p in tournaments[lead].elo else 0.0)
    rows = []
    for p in players:
        row = {"player": p}
        for j, judge in judges.items():
            rating = tournaments[j].elo.get(p)
            row[f"Elo ({judge_label(j, judge)})"] = fmt_ci(rating.rating, [rating.lo, rating.hi], 0, False) if rating else "–"
            s = summaries[j][p]
            row[f"reward ({judge_label(j, judge)})"] = fmt_ci(s["reward_mean"], s["reward_ci"])
        row["words"] = f"{summaries[lead][p]['length_mean']:.0f}"
        row.update((extra or {}).get(p, {}))
        rows.append(row)
    return rows


def player_extras(model_of: Mapping[str, str], ppl: Mapping[str, float], kl: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, str]]:
    """The judge-free columns of each of the run's players: KL to SFT and to the base, held-out perplexity."""
    out = {}
    for player, model in model_of.items():
        kl_sft = kl.get(model, {}).get("sft")
        kl_base = kl.get(model, {}).get("base")
        out[player] = {
            "KL to SFT": fmt_ci(kl_sft[0], kl_sft[1:], 2, False) if kl_sft else ("0" if model == "sft" else "–"),
            "KL to base": fmt_ci(kl_base[0], kl_base[1:], 2, False) if kl_base else ("0" if model == "base" else "–"),
            "perplexity": f"{ppl[model]:.2f}" if model in ppl else "–",
        }
    return out


def kl_curve_rows(curve: Sequence[Mapping[str, Any]], judges: Mapping[str, Judge]) -> list[dict[str, str]]:
    """The reward-against-KL points as table rows."""
    return [{"update": str(p["update"]), "KL to SFT (nats)": fmt_ci(p["kl"], p["kl_ci"], 2, False),
             **{f"reward ({judge_label(j, judge)})": f"{p['rewards'][j]:+.3f}" for j, judge in judges.items()},
             "words": f"{p['reply_words']:.0f}"} for p in curve]
