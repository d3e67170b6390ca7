"""Stage 05's results: one table of every player under every judge, and the stage's metrics record.

The table has a row per player (the run's models under each sampling preset, best-of-n on the SFT model, and
OpenAssistant's models from their sampling reports) and, per judge, the Elo rating and mean reward with their
intervals; then what does not need a judge: reply length, KL to the SFT model and to the base, perplexity on
held-out threads, and what each method cost to train (time and peak memory, from the training stages' own
metrics; best-of-n trains nothing and pays at answer time instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from utils.reward.judges import Judge, lead_judge


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

    ``summaries[judge][player]`` are :func:`utils.evaluate.answers.summarize` dicts; ``extra[player]`` adds columns
    (KL, perplexity, ...). A judge PPO was trained against is starred.
    """
    lead = lead_judge(judges)
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


def best_of_extras(best_of: Mapping[str, int]) -> dict[str, dict[str, str]]:
    """The judge-free columns of the best-of-n players (``{player: n}``): KL to SFT by its analytic bound; no
    perplexity (best-of-n is a way to pick among SFT's samples, not a model with a likelihood of its own)."""
    from utils.evaluate.best_of_n import kl_bound

    return {p: {"KL to SFT": f"≤ {kl_bound(n):.2f} (analytic)", "KL to base": "–", "perplexity": "–"} for p, n in best_of.items()}


def training_costs(run_dir: str | Path) -> dict[str, dict[str, float | None]]:
    """What each training stage recorded it cost: ``{"sft" | "reward model" | "ppo" | "dpo" | "rloo": {"seconds", "peak_memory_mb"}}``.

    Seconds are training alone (the optimizer steps; PPO's and RLOO's include their sampling and scoring), peak memory the
    stage's (GPU: torch's allocator; CPU: the process's resident memory). Stages that have not run are left out.
    """
    from utils.pipeline.artifacts import StageNotRun, read_metrics
    from utils.pipeline.stages import DPO, PPO, REWARD, RLOO, SFT

    costs = {}
    for name, stage in (("sft", SFT), ("reward model", REWARD), ("ppo", PPO), ("dpo", DPO), ("rloo", RLOO)):
        try:
            m = read_metrics(run_dir, stage)
        except StageNotRun:
            continue
        seconds = m.get("train_seconds")
        if name == "ppo" and m.get("seconds_per_update") is not None:
            seconds = m["seconds_per_update"] * m.get("updates", 0)
        costs[name] = {"seconds": seconds, "peak_memory_mb": m.get("peak_memory_mb")}
    return costs


def _seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f} s"


def cost_columns(model_of: Mapping[str, str], best_of: Mapping[str, int], costs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """The table's cost columns per player: the training its method needed on top of SFT (PPO and best-of-n also
    need the reward model, stage 03, as RLOO does) and that training's peak memory; best-of-n's cost is n× sampling instead."""
    rm = costs.get("reward model", {}).get("seconds")
    out = {}
    for player, model in model_of.items():
        c = costs.get(model, {})
        training = {"base": "– (pretrained)", "sft": _seconds(c.get("seconds"))}.get(model, f"{_seconds(c.get('seconds'))} on top of SFT")
        if model in ("ppo", "rloo"):
            training += f" (+ reward model {_seconds(rm)})"
        peak = c.get("peak_memory_mb")
        out[player] = {"training": training, "peak memory (MiB)": "–" if peak is None else f"{peak:,.0f}"}
    for player, n in best_of.items():
        out[player] = {"training": f"none: {n}× sampling and scoring per answer (+ reward model {_seconds(rm)})", "peak memory (MiB)": "–"}
    return out


def win_columns(length_controlled: Mapping[str, Mapping[str, Mapping[str, Any]]], judge: str) -> dict[str, dict[str, str]]:
    """Per player, its raw and length-controlled win rate against SFT under ``judge``, with intervals
    (:func:`utils.evaluate.length_control.length_controlled_table`)."""
    out = {}
    for player, r in length_controlled.get(judge, {}).items():
        if r.get("lc_win_rate") is not None:
            out[player] = {"win vs SFT": fmt_ci(r["win_rate"], r["win_rate_ci"], 2, False),
                           "LC win vs SFT": fmt_ci(r["lc_win_rate"], r["ci"], 2, False)}
    return out


def results_table(run_dir: str | Path, judges: Mapping[str, Judge], tournaments: Mapping[str, Any],
                  summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], model_of: Mapping[str, str], best_of: Mapping[str, int],
                  ppl: Mapping[str, float], kl: Mapping[str, Mapping[str, Sequence[float]]],
                  length_controlled: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Stage 05's table, ``(rows, costs)``: every player's Elo and reward under each judge (:func:`results_rows`), its
    raw and length-controlled win rate against SFT under the lead judge, its judge-free columns (KL, perplexity), and
    what its method cost to train (read from the run's training stages)."""
    extras = {p: dict(c) for p, c in win_columns(length_controlled or {}, lead_judge(judges)).items()}
    for player, columns in {**player_extras(model_of, ppl, kl), **best_of_extras(best_of)}.items():
        extras.setdefault(player, {}).update(columns)
    costs = training_costs(run_dir)
    for player, columns in cost_columns(model_of, best_of, costs).items():
        extras.setdefault(player, {}).update(columns)
    return results_rows(judges, tournaments, summaries, extras), costs


def players_summary(players: Sequence[str], lead_summaries: Mapping[str, Mapping[str, Any]], model_of: Mapping[str, str],
                    best_of: Mapping[str, int], ppl: Mapping[str, float], kl: Mapping[str, Mapping[str, Sequence[float]]],
                    hh: Mapping[str, Mapping[str, Any]], costs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Stage 05's ``models`` metrics: per player its answers' length and count (under the lead judge), and for the
    run's own models perplexity, KL to the base and to SFT, HH-RLHF refusals and rewards, training cost; for a
    best-of-n player its n and the analytic KL bound."""
    from utils.evaluate.best_of_n import kl_bound

    out = {}
    for p in players:
        row = {k: lead_summaries[p][k] for k in ("length_mean", "prompts", "answers")}
        if m := model_of.get(p):
            row.update({"ppl": ppl[m], "kl": kl.get(m, {}).get("base"), "kl_sft": kl.get(m, {}).get("sft"),
                        "hh_refusal_rate": hh[m]["refusal_rate"], "hh_rewards": hh[m]["rewards"],
                        "train_seconds": costs.get(m, {}).get("seconds"), "peak_memory_mb": costs.get(m, {}).get("peak_memory_mb")})
        if p in best_of:
            row.update({"best_of_n": best_of[p], "kl_sft_bound": kl_bound(best_of[p])})
        out[p] = row
    return out


def against_baseline(tournaments: Mapping[str, Any], judges: Mapping[str, Judge], players: Sequence[str], baseline: str) -> list[dict[str, str]]:
    """Rows reading each player against ``baseline`` (SFT, the model every method starts from), per judge: the
    share of points it took in their games with its bootstrap interval, and what the interval allows one to say.

    An interval containing 0.5 means the judge cannot tell the two apart on these prompts: the honest reading of
    most differences on a small profile.
    """
    rows = []
    for p in players:
        if p == baseline:
            continue
        row = {"player": p, "against": baseline}
        for j, judge in judges.items():
            w = tournaments[j].win_rate_intervals.get(p, {}).get(baseline)
            if w is None:
                row[judge_label(j, judge)] = "no common prompts"
                continue
            verdict = "better" if w.lo > 0.5 else "worse" if w.hi < 0.5 else "cannot tell apart"
            row[judge_label(j, judge)] = f"{fmt_ci(w.rate, [w.lo, w.hi], 2, False)}: {verdict}"
        rows.append(row)
    return rows


def baseline_reading(rows: Sequence[Mapping[str, str]], judges: Mapping[str, Judge]) -> str:
    """What :func:`against_baseline`'s rows say in this run, one sentence per judge: how many players it finds better
    than SFT, worse, or cannot tell apart from it (read from the run, not promised in prose)."""
    sentences = []
    for j, judge in judges.items():
        verdicts = [row.get(judge_label(j, judge), "").rsplit(": ", 1)[-1] for row in rows]
        counts = {v: verdicts.count(v) for v in ("better", "worse", "cannot tell apart")}
        sentences.append(f"Under {judge_label(j, judge)}, of {len(rows)} players: {counts['better']} better than SFT, "
                         f"{counts['worse']} worse, {counts['cannot tell apart']} cannot be told apart from it.")
    return " ".join(sentences)


def perplexity_reading(by_model: Mapping[str, float]) -> str:
    """Whether SFT predicts held-out replies better than the base in this run, and how far each later model moved."""
    if "sft" not in by_model or "base" not in by_model:
        return ""
    sft, base = by_model["sft"], by_model["base"]
    text = f"SFT {sft:.2f} against the base's {base:.2f}: {'lower, as SFT should' if sft < base else 'not lower: SFT did not help here'}."
    later = [f"{m} {v - sft:+.2f}" for m, v in by_model.items() if m not in ("sft", "base")]
    return text + (f" After SFT, each model's change: {', '.join(later)}." if later else "")
