"""Length-controlled win rates: did a method win because its answers are better, or only longer?

Judges, human and automatic, like long answers; so do the kit's reward models (stage 03 measures it). A raw win
rate against SFT therefore mixes two things: how much better a player's answers are, and how much longer. AlpacaEval
2 (Dubois et al., 2024, "Length-Controlled AlpacaEval", https://arxiv.org/abs/2404.04475) separates them with a
generalised linear model of the judge's verdicts. For each game of a player against the baseline on one prompt:

    P(player wins) = σ(θ + φ · tanh(Δwords / s))

with ``Δwords`` the player's answer length minus the baseline's and ``s`` the standard deviation of ``Δwords`` over
the games (AlpacaEval's normalisation; ``tanh`` keeps one very long answer from dominating). ``θ`` is what the
player wins *beyond* length, ``φ`` how much length buys. The **length-controlled win rate** is the model's
prediction at zero length difference, ``σ(θ)``: the win rate the player would have if its answers were as long as
the baseline's. AlpacaEval also fits a difficulty term per instruction (shared by all models, fitted on its 800
instructions and hundreds of models); with a handful of players and a few dozen prompts the kit leaves it out.

A draw counts half a win (the logistic likelihood takes fractional outcomes). Intervals resample *prompts*, as every
interval of stage 05 does (games on one prompt share its difficulty), refitting the model each round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from utils.evaluate.tournament import bootstrap_draws, judge

RIDGE = 1e-3  # a little L2 on θ and φ: a player that wins every game still gets a finite θ


@dataclass
class LengthGames:
    """One player's games against the baseline: outcome (1 win, 0.5 draw, 0 loss), length difference (words), prompt."""

    outcomes: np.ndarray
    length_diffs: np.ndarray
    prompts: np.ndarray  # index of each game's prompt, for resampling


def length_games(player: Mapping[str, Sequence[float]], baseline: Mapping[str, Sequence[float]],
                 player_words: Mapping[str, Sequence[int]], baseline_words: Mapping[str, Sequence[int]],
                 tie_margin: float = 0.0) -> LengthGames:
    """Every answer of the player against every answer of the baseline on each prompt both answered (as the
    tournament's games), with the player's length minus the baseline's. Inputs are ``[prompt] -> per answer``."""
    outcomes, diffs, prompts = [], [], []
    for i, prompt in enumerate(sorted(player.keys() & baseline.keys())):
        for ra, wa in zip(player[prompt], player_words[prompt]):
            for rb, wb in zip(baseline[prompt], baseline_words[prompt]):
                outcomes.append(judge(ra, rb, tie_margin))
                diffs.append(wa - wb)
                prompts.append(i)
    return LengthGames(np.array(outcomes, dtype=float), np.array(diffs, dtype=float), np.array(prompts, dtype=int))


def fit_length_glm(outcomes: np.ndarray, features: np.ndarray, ridge: float = RIDGE, steps: int = 50) -> np.ndarray:
    """``(θ, φ)`` of ``P(win) = σ(θ + φ·x)`` by Newton's method on the (ridge-penalised) logistic likelihood."""
    X = np.column_stack([np.ones_like(features), features])
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - outcomes) + ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def lc_win_rate(games: LengthGames, scale: float | None = None) -> tuple[float, float]:
    """``(lc_win_rate, φ)``: σ(θ) of the fitted model, and the length coefficient φ. ``scale``: the ``s`` of the
    feature ``tanh(Δwords / s)``; by default the standard deviation of the games' length differences."""
    if len(games.outcomes) == 0:
        return math.nan, math.nan
    s = scale if scale is not None else float(games.length_diffs.std())
    x = np.tanh(games.length_diffs / s) if s > 0 else np.zeros_like(games.length_diffs)  # equal lengths: no length term
    theta, phi = fit_length_glm(games.outcomes, x)
    return float(1.0 / (1.0 + math.exp(-theta))), float(phi)


def length_controlled(games: LengthGames, rounds: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The LC win rate with a percentile interval over prompts, beside the raw win rate and its interval.

    Each bootstrap round draws prompts with replacement and refits the model on their games (the same ``s``,
    the full sample's, so rounds differ in the data, not in the feature's units)."""
    if len(games.outcomes) == 0:
        return {"lc_win_rate": None, "ci": None, "win_rate": None, "win_rate_ci": None, "length_coef": None, "games": 0, "prompts": 0}
    s = float(games.length_diffs.std())
    lc, phi = lc_win_rate(games, s)
    n_prompts = int(games.prompts.max()) + 1
    by_prompt = [np.flatnonzero(games.prompts == i) for i in range(n_prompts)]
    lcs, raws = [], []
    for drawn in bootstrap_draws(n_prompts, rounds, seed):
        idx = np.concatenate([by_prompt[i] for i in drawn])
        sample = LengthGames(games.outcomes[idx], games.length_diffs[idx], games.prompts[idx])
        lcs.append(lc_win_rate(sample, s)[0])
        raws.append(sample.outcomes.mean())
    tail = (1 - confidence) / 2 * 100
    interval = lambda v: [float(x) for x in np.percentile(v, [tail, 100 - tail])]  # noqa: E731
    return {"lc_win_rate": lc, "ci": interval(lcs), "win_rate": float(games.outcomes.mean()), "win_rate_ci": interval(raws),
            "length_coef": phi, "mean_length_diff": float(games.length_diffs.mean()), "games": len(games.outcomes),
            "prompts": n_prompts}


def length_controlled_table(scores: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
                            words: Mapping[str, Mapping[str, Sequence[int]]], baseline: str, players: Sequence[str],
                            tie_margin: float = 0.0, rounds: int = 1000, seed: int = 0) -> dict[str, dict[str, dict]]:
    """``[judge][player]``: :func:`length_controlled` of each player against ``baseline`` under each judge.
    ``scores[judge][player][prompt]`` and ``words[player][prompt]`` list one value per answer."""
    out: dict[str, dict[str, dict]] = {}
    for j, by_player in scores.items():
        if baseline not in by_player:
            continue
        out[j] = {}
        for p in players:
            if p == baseline or p not in by_player:
                continue
            games = length_games(by_player[p], by_player[baseline], words[p], words[baseline], tie_margin)
            out[j][p] = {**length_controlled(games, rounds=rounds, seed=seed), "against": baseline}
    return out


def lc_rows(table: Mapping[str, Mapping[str, Mapping]], judge_labels: Mapping[str, str]) -> list[dict[str, str]]:
    """Readable rows: per player, per judge ``raw → LC`` win rates against the baseline, with intervals."""
    from utils.evaluate.results import fmt_ci

    players = list(dict.fromkeys(p for by_player in table.values() for p in by_player))
    rows = []
    for p in players:
        row = {"player": p}
        for j, by_player in table.items():
            r = by_player.get(p)
            if not r or r["lc_win_rate"] is None:
                row[judge_labels.get(j, j)] = "–"
                continue
            row[judge_labels.get(j, j)] = (f"{fmt_ci(r['win_rate'], r['win_rate_ci'], 2, False)} → LC "
                                           f"{fmt_ci(r['lc_win_rate'], r['ci'], 2, False)}")
        any_r = next((by_player[p] for by_player in table.values() if p in by_player), None)
        row["words vs baseline"] = f"{any_r['mean_length_diff']:+.1f}" if any_r and any_r["games"] else "–"
        rows.append(row)
    return rows


def plot_reward_against_length(words: Mapping[str, Sequence[int]], rewards: Mapping[str, Sequence[float]],
                               players: Sequence[str], reward_label: str = "reward", path: str | Path | None = None):
    """One point per answer, reward against length in words, a colour and a least-squares line per player: where a
    player's cloud sits *above* another's at the same length, it won by more than length."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, p in enumerate(players):
        x, y = np.asarray(words[p], dtype=float), np.asarray(rewards[p], dtype=float)
        colour = f"C{i % 10}"
        ax.scatter(x, y, s=10, alpha=0.45, color=colour, label=p)
        if len(x) > 2 and x.std() > 0:
            slope, intercept = np.polyfit(x, y, 1)
            grid = np.linspace(x.min(), x.max(), 20)
            ax.plot(grid, slope * grid + intercept, color=colour, linewidth=1.5)
    ax.set_xlabel("answer length (words)")
    ax.set_ylabel(reward_label)
    ax.set_title("reward against length, one point per answer (lines: least squares per player)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
