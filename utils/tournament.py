"""A tournament between models, judged by the reward model: win rates and Elo ratings with confidence intervals.

Every model ("player") answers the same prompts; the reward model scores each answer. Two players'
answers to one prompt make a *game*: the higher-scored answer wins (1 point), a draw is worth half a
point each. With several samples per prompt, every sample of one player meets every sample of the other.

* **Win rate** of A over B: A's points divided by the games A and B played, on the prompts both answered.
* **Elo**, as Vicuna / Chatbot Arena introduced it for chat models (Chiang et al. 2023; the OpenAssistant
  paper ranks its models the same way): players start at 1000; after each game both move by
  ``k * (result - expected)``, where the expected result of A against B is
  ``1 / (1 + 10 ** ((R_B - R_A) / 400))``. Online Elo depends on the order of the games, so the rating we
  report is the median over bootstrap rounds, each replaying a resample (with replacement, in random
  order) of all games; the interval is the matching percentile interval.

Mean rewards get bootstrap intervals too (:func:`bootstrap_mean_ci`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np

# Vicuna / FastChat's online-Elo constants: a small K because there are many games.
ELO_K = 4.0
ELO_SCALE = 400.0
ELO_BASE = 10.0
ELO_INITIAL = 1000.0


@dataclass(frozen=True)
class Game:
    """One comparison: ``score`` is A's result, 1 for a win, 0.5 for a draw, 0 for a loss."""

    a: str
    b: str
    score: float


@dataclass(frozen=True)
class Rating:
    """A bootstrap Elo rating: the median over rounds and a percentile interval."""

    rating: float
    lo: float
    hi: float
    games: int

    def as_dict(self) -> dict:
        return {"rating": self.rating, "ci": [self.lo, self.hi], "games": self.games}


@dataclass
class Tournament:
    """Everything :func:`run_tournament` works out; ``unmatched`` players shared no prompt with anyone."""

    players: list[str]
    games: list[Game]
    win_rates: dict[str, dict[str, float]]
    elo: dict[str, Rating]
    unmatched: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        return sorted(self.elo, key=lambda p: -self.elo[p].rating)


def judge(reward_a: float, reward_b: float, tie_margin: float = 0.0) -> float:
    """A's result against B: rewards within ``tie_margin`` of each other are a draw."""
    if abs(reward_a - reward_b) <= tie_margin:
        return 0.5
    return 1.0 if reward_a > reward_b else 0.0


def games_from_scores(scores: Mapping[str, Mapping[str, Sequence[float]]], tie_margin: float = 0.0) -> list[Game]:
    """All games between all pairs of players, on the prompts both answered.

    ``scores[player][prompt]`` lists the rewards of that player's answers (one per sample) to the prompt.
    """
    games = []
    for a, b in combinations(scores, 2):
        for prompt in sorted(scores[a].keys() & scores[b].keys()):  # sorted: reproducible game order
            games += [Game(a, b, judge(ra, rb, tie_margin)) for ra in scores[a][prompt] for rb in scores[b][prompt]]
    return games


def win_rates(games: Sequence[Game]) -> dict[str, dict[str, float]]:
    """``rates[a][b]``: the share of points a took in its games against b (so ``rates[b][a] = 1 - rates[a][b]``)."""
    points: dict[tuple[str, str], float] = {}
    played: dict[tuple[str, str], int] = {}
    for g in games:
        for x, y, s in ((g.a, g.b, g.score), (g.b, g.a, 1.0 - g.score)):
            points[x, y] = points.get((x, y), 0.0) + s
            played[x, y] = played.get((x, y), 0) + 1
    rates: dict[str, dict[str, float]] = {}
    for (x, y), n in played.items():
        rates.setdefault(x, {})[y] = points[x, y] / n
    return rates


def expected_score(rating_a: float, rating_b: float, scale: float = ELO_SCALE, base: float = ELO_BASE) -> float:
    """The result A is expected to get against B under the Elo model."""
    return 1.0 / (1.0 + base ** ((rating_b - rating_a) / scale))


def elo_ratings(
    games: Sequence[Game],
    k: float = ELO_K,
    scale: float = ELO_SCALE,
    base: float = ELO_BASE,
    initial: float = ELO_INITIAL,
) -> dict[str, float]:
    """Online Elo: replay the games in the given order, moving both players after each."""
    ratings: dict[str, float] = {}
    for g in games:
        ra, rb = ratings.get(g.a, initial), ratings.get(g.b, initial)
        ea = expected_score(ra, rb, scale, base)
        ratings[g.a] = ra + k * (g.score - ea)
        ratings[g.b] = rb + k * ((1.0 - g.score) - (1.0 - ea))
    return ratings


def elo_rounds(
    games: Sequence[Game],
    orders: np.ndarray,
    players: Sequence[str],
    k: float = ELO_K,
    scale: float = ELO_SCALE,
    base: float = ELO_BASE,
    initial: float = ELO_INITIAL,
) -> np.ndarray:
    """:func:`elo_ratings` for many game sequences at once: row r replays ``games[orders[r]]``.

    Returns ratings of shape ``(rounds, len(players))``. All rounds advance together, one game per step,
    so a thousand bootstrap rounds cost one pass over the games in numpy rather than a thousand in Python.
    """
    index = {p: i for i, p in enumerate(players)}
    a = np.array([index[g.a] for g in games], dtype=np.int64)
    b = np.array([index[g.b] for g in games], dtype=np.int64)
    s = np.array([g.score for g in games], dtype=np.float64)
    orders = np.asarray(orders, dtype=np.int64)
    ratings = np.full((orders.shape[0], len(players)), initial, dtype=np.float64)
    rows = np.arange(orders.shape[0])
    for step in range(orders.shape[1]):
        idx = orders[:, step]
        ia, ib, sa = a[idx], b[idx], s[idx]
        ra, rb = ratings[rows, ia], ratings[rows, ib]
        ea = 1.0 / (1.0 + base ** ((rb - ra) / scale))
        ratings[rows, ia] = ra + k * (sa - ea)
        ratings[rows, ib] = rb - k * (sa - ea)
    return ratings


def bootstrap_elo(
    games: Sequence[Game],
    rounds: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    k: float = ELO_K,
    scale: float = ELO_SCALE,
    base: float = ELO_BASE,
    initial: float = ELO_INITIAL,
) -> dict[str, Rating]:
    """Elo ratings with percentile intervals from ``rounds`` resamples (with replacement, shuffled) of the games."""
    if not games:
        return {}
    players = sorted({g.a for g in games} | {g.b for g in games})
    rng = np.random.default_rng(seed)
    orders = rng.integers(0, len(games), size=(rounds, len(games)))
    ratings = elo_rounds(games, orders, players, k, scale, base, initial)
    tail = 100 * (1 - confidence) / 2
    lo, mid, hi = np.percentile(ratings, [tail, 50, 100 - tail], axis=0)
    count = {p: 0 for p in players}
    for g in games:
        count[g.a] += 1
        count[g.b] += 1
    return {p: Rating(float(mid[i]), float(lo[i]), float(hi[i]), count[p]) for i, p in enumerate(players)}


def bootstrap_mean_ci(
    values: Sequence[float], rounds: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the sample mean and a percentile bootstrap interval for it.

    Pass one value per independent unit (e.g. per prompt, averaged over its samples): answers to the
    same prompt are correlated, and resampling them one by one would make the interval too narrow.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(rounds, x.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lo), float(hi)


def run_tournament(
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    tie_margin: float = 0.0,
    rounds: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    k: float = ELO_K,
) -> Tournament:
    """Games, win rates and bootstrap Elo for players given as ``scores[player][prompt] = [rewards]``."""
    games = games_from_scores(scores, tie_margin)
    elo = bootstrap_elo(games, rounds=rounds, confidence=confidence, seed=seed, k=k)
    return Tournament(
        players=list(scores),
        games=games,
        win_rates=win_rates(games),
        elo=elo,
        unmatched=[p for p in scores if p not in elo],
    )


def plot_win_rates(rates: Mapping[str, Mapping[str, float]], players: Sequence[str], ax=None):
    """Heat map: row player's win rate against column player, with the numbers written in."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(1.2 * len(players) + 2.5, 0.9 * len(players) + 1.5))[1]
    grid = np.array([[rates.get(r, {}).get(c, np.nan) for c in players] for r in players])
    image = ax.imshow(grid, cmap="RdBu", vmin=0, vmax=1)
    for i in range(len(players)):
        for j in range(len(players)):
            if np.isfinite(grid[i, j]):
                dark = abs(grid[i, j] - 0.5) > 0.3  # white digits on the deep colours
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(players)), players, rotation=30, ha="right")
    ax.set_yticks(range(len(players)), players)
    ax.set_title("win rate of row over column (reward model as judge)")
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    return ax


def plot_elo(elo: Mapping[str, Rating], ax=None):
    """Elo ratings, best on top, with their bootstrap intervals."""
    import matplotlib.pyplot as plt

    order = sorted(elo, key=lambda p: elo[p].rating)
    ax = ax or plt.subplots(figsize=(6, 0.45 * len(order) + 1.2))[1]
    mid = np.array([elo[p].rating for p in order])
    err = np.array([[elo[p].rating - elo[p].lo for p in order], [elo[p].hi - elo[p].rating for p in order]])
    ax.errorbar(mid, range(len(order)), xerr=err, fmt="o", capsize=4)
    ax.set_yticks(range(len(order)), order)
    ax.axvline(ELO_INITIAL, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("Elo rating (bootstrap median and interval)")
    return ax
