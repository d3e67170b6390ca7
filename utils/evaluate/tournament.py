"""A tournament between models, judged by the reward model: win rates and Elo ratings with confidence intervals.

Every model ("player") answers the same prompts; the reward model scores each answer. Two players'
answers to one prompt make a *game*: the higher-scored answer wins (1 point), a draw is worth half a
point each. With several samples per prompt, every sample of one player meets every sample of the other.

* **Win rate** of A over B: A's points divided by the games A and B played, on the prompts both answered.
* **Elo**, as Vicuna / Chatbot Arena introduced it for chat models (Chiang et al. 2023; the OpenAssistant
  paper ranks its models the same way): players start at 1000; after each game both move by
  ``k * (result - expected)``, where the expected result of A against B is
  ``1 / (1 + 10 ** ((R_B - R_A) / 400))``. Online Elo depends on the order of the games, so the rating we
  report is the median over bootstrap rounds, each replaying a resample of the games in random order;
  the interval is the matching percentile interval.

**What is resampled: prompts.** Every prompt yields a game for every pair of players and sample, and
those games are correlated: a hard prompt is hard for everyone, the answers of one player to one prompt
are alike, and the players share sampling seeds. Resampling games one by one treats them as independent
and makes the intervals too narrow, the more so the more samples per prompt. So each bootstrap round
draws prompts with replacement and replays all their games (Efron's cluster bootstrap; the argument of
:func:`bootstrap_mean_ci` for means). Win rates get intervals from the same rounds. Games that carry no
prompt are resampled one by one, as before.

Mean rewards get bootstrap intervals too (:func:`bootstrap_mean_ci`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np

# Vicuna / FastChat's online-Elo constants: a small K because there are many games.
ELO_K = 4.0
ELO_SCALE = 400.0
ELO_BASE = 10.0
ELO_INITIAL = 1000.0


Resample = Literal["prompt", "game"]


@dataclass(frozen=True)
class Game:
    """One comparison: ``score`` is A's result, 1 for a win, 0.5 for a draw, 0 for a loss; ``prompt``: the
    prompt both answered (None: a game on its own, resampled alone)."""

    a: str
    b: str
    score: float
    prompt: str | None = None


@dataclass(frozen=True)
class Rating:
    """A bootstrap Elo rating: the median over rounds and a percentile interval."""

    rating: float
    lo: float
    hi: float
    games: int

    def as_dict(self) -> dict:
        return {"rating": self.rating, "ci": [self.lo, self.hi], "games": self.games}


@dataclass(frozen=True)
class WinRate:
    """A's share of the points against B, with a bootstrap percentile interval over prompts."""

    rate: float
    lo: float
    hi: float
    games: int
    prompts: int

    def as_dict(self) -> dict:
        return {"rate": self.rate, "ci": [self.lo, self.hi], "games": self.games, "prompts": self.prompts}


@dataclass
class Tournament:
    """Everything :func:`run_tournament` works out; ``unmatched`` players shared no prompt with anyone.

    ``win_rates[a][b]`` is a's share of the points against b; ``win_rate_intervals[a][b]`` the same with
    its interval (from the bootstrap rounds that give the Elo intervals).
    """

    players: list[str]
    games: list[Game]
    win_rates: dict[str, dict[str, float]]
    elo: dict[str, Rating]
    unmatched: list[str] = field(default_factory=list)
    win_rate_intervals: dict[str, dict[str, WinRate]] = field(default_factory=dict)

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
            games += [Game(a, b, judge(ra, rb, tie_margin), prompt) for ra in scores[a][prompt] for rb in scores[b][prompt]]
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
    """:func:`elo_ratings` for many game sequences at once: row r replays ``games[orders[r]]``, where an
    index of -1 is no game (rounds of different lengths are padded with it).

    Returns ratings of shape ``(rounds, len(players))``. All rounds advance together, one game per step,
    so a thousand bootstrap rounds cost one pass over the games in numpy rather than a thousand in Python.
    """
    index = {p: i for i, p in enumerate(players)}
    # The padding game, last: player 0 against itself, drawn. Its expected result is 0.5, so it moves no one.
    a = np.array([index[g.a] for g in games] + [0], dtype=np.int64)
    b = np.array([index[g.b] for g in games] + [0], dtype=np.int64)
    s = np.array([g.score for g in games] + [0.5], dtype=np.float64)
    orders = np.asarray(orders, dtype=np.int64)
    orders = np.where(orders < 0, len(games), orders)
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


def resampling_units(games: Sequence[Game], resample: Resample = "prompt") -> list[np.ndarray]:
    """The games grouped into what the bootstrap draws: one array of game indices per prompt (games
    without a prompt, and every game with ``resample="game"``, are a unit each), in first-seen order."""
    if resample not in ("prompt", "game"):
        raise ValueError(f"resample must be 'prompt' or 'game', got {resample!r}")
    units: dict[object, list[int]] = {}
    for i, g in enumerate(games):
        key = ("prompt", g.prompt) if resample == "prompt" and g.prompt is not None else ("game", i)
        units.setdefault(key, []).append(i)
    return [np.array(v, dtype=np.int64) for v in units.values()]


def bootstrap_draws(n_units: int, rounds: int, seed: int) -> np.ndarray:
    """``drawn[r]``: the units bootstrap round r draws, ``n_units`` of them with replacement."""
    return np.random.default_rng(seed).integers(0, n_units, size=(rounds, n_units))


def draw_counts(drawn: np.ndarray, n_units: int) -> np.ndarray:
    """``counts[r, u]``: how often round r drew unit u."""
    rounds = drawn.shape[0]
    flat = (np.arange(rounds)[:, None] * n_units + drawn).ravel()
    return np.bincount(flat, minlength=rounds * n_units).reshape(rounds, n_units)


REPLAY_SEED_OFFSET = 1  # added to the bootstrap's seed: the games' replay order is drawn apart from which units are drawn


def replay_orders(units: list[np.ndarray], drawn: np.ndarray, seed: int) -> np.ndarray:
    """Each round's games in random order (every drawn unit's games, as often as it was drawn), the
    rounds padded at the end with -1 to one length."""
    if all(len(u) == 1 for u in units):  # games resampled one by one: the draws are already in random order
        return np.concatenate(units)[drawn]
    rng = np.random.default_rng(seed + REPLAY_SEED_OFFSET)  # its own stream, not the draws'
    rows = [np.concatenate([units[u] for u in row]) for row in drawn]
    orders = np.full((len(rows), max(len(r) for r in rows)), -1, dtype=np.int64)
    for i, games in enumerate(rows):
        orders[i, : len(games)] = rng.permutation(games)
    return orders


def _percentiles(x: np.ndarray, confidence: float) -> np.ndarray:
    tail = 100 * (1 - confidence) / 2
    return np.nanpercentile(x, [tail, 50, 100 - tail], axis=0)


def bootstrap_elo(
    games: Sequence[Game],
    rounds: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    k: float = ELO_K,
    scale: float = ELO_SCALE,
    base: float = ELO_BASE,
    initial: float = ELO_INITIAL,
    resample: Resample = "prompt",
) -> dict[str, Rating]:
    """Elo ratings with percentile intervals from ``rounds`` bootstrap replays: each draws prompts with
    replacement (``resample="game"``: games) and replays all their games in random order."""
    if not games:
        return {}
    players = sorted({g.a for g in games} | {g.b for g in games})
    units = resampling_units(games, resample)
    orders = replay_orders(units, bootstrap_draws(len(units), rounds, seed), seed)
    ratings = elo_rounds(games, orders, players, k, scale, base, initial)
    lo, mid, hi = _percentiles(ratings, confidence)
    count = {p: 0 for p in players}
    for g in games:
        count[g.a] += 1
        count[g.b] += 1
    return {p: Rating(float(mid[i]), float(lo[i]), float(hi[i]), count[p]) for i, p in enumerate(players)}


def bootstrap_win_rates(
    games: Sequence[Game], rounds: int = 1000, confidence: float = 0.95, seed: int = 0, resample: Resample = "prompt"
) -> dict[str, dict[str, WinRate]]:
    """``rates[a][b]``: a's share of the points against b (as :func:`win_rates`) with a percentile interval
    from the same bootstrap draws as :func:`bootstrap_elo` (same ``seed``, same prompts per round)."""
    if not games:
        return {}
    pairs = sorted({tuple(sorted((g.a, g.b))) for g in games})  # a pair is one column whoever was "a"
    column = {pair: j for j, pair in enumerate(pairs)}
    units = resampling_units(games, resample)
    points = np.zeros((len(units), len(pairs)))  # points of the pair's first player (in sorted order), per unit
    played = np.zeros((len(units), len(pairs)))
    for u, members in enumerate(units):
        for i in members:
            g = games[i]
            first, j = g.a < g.b, column[min(g.a, g.b), max(g.a, g.b)]
            points[u, j] += g.score if first else 1.0 - g.score
            played[u, j] += 1
    counts = draw_counts(bootstrap_draws(len(units), rounds, seed), len(units))
    with np.errstate(invalid="ignore", divide="ignore"):  # a round may draw no game of a pair: NaN, left out
        rates = (counts @ points) / (counts @ played)
    lo, _, hi = _percentiles(rates, confidence)
    total_points, total_played = points.sum(axis=0), played.sum(axis=0)
    prompts = (played > 0).sum(axis=0)
    out: dict[str, dict[str, WinRate]] = {}
    for (a, b), j in column.items():
        rate = total_points[j] / total_played[j]
        n, m = int(total_played[j]), int(prompts[j])
        out.setdefault(a, {})[b] = WinRate(float(rate), float(lo[j]), float(hi[j]), n, m)
        out.setdefault(b, {})[a] = WinRate(float(1 - rate), float(1 - hi[j]), float(1 - lo[j]), n, m)
    return out


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
    """Games, win rates and bootstrap Elo for players given as ``scores[player][prompt] = [rewards]``;
    the intervals come from resampling prompts (see the module's docstring)."""
    games = games_from_scores(scores, tie_margin)
    elo = bootstrap_elo(games, rounds=rounds, confidence=confidence, seed=seed, k=k)
    return Tournament(
        players=list(scores),
        games=games,
        win_rates=win_rates(games),
        elo=elo,
        unmatched=[p for p in scores if p not in elo],
        win_rate_intervals=bootstrap_win_rates(games, rounds=rounds, confidence=confidence, seed=seed),
    )


def plot_win_rates(rates: Mapping[str, Mapping[str, float]], players: Sequence[str], ax=None,
                   title: str = "win rate of row over column (reward model as judge)", path: str | Path | None = None):
    """Heat map: row player's win rate against column player, with the numbers written in (saved to ``path``)."""
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
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    if path is not None:
        ax.figure.savefig(path, dpi=110, bbox_inches="tight")
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
