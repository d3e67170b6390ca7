"""Win rates and Elo on hand-made comparison tables whose answers are worked out by hand."""

import math

import numpy as np
import pytest

from utils.evaluate.tournament import (
    Game,
    bootstrap_draws,
    bootstrap_elo,
    bootstrap_mean_ci,
    bootstrap_win_rates,
    elo_ratings,
    elo_rounds,
    expected_score,
    games_from_scores,
    judge,
    replay_orders,
    resampling_units,
    run_tournament,
    win_rates,
)


def test_judge_counts_close_rewards_as_a_draw():
    assert judge(1.0, 0.0) == 1.0
    assert judge(0.0, 1.0) == 0.0
    assert judge(0.3, 0.3) == 0.5
    assert judge(0.30, 0.35, tie_margin=0.1) == 0.5
    assert judge(0.30, 0.45, tie_margin=0.1) == 0.0


def test_win_rates_on_a_hand_made_table():
    # p1: A 3 > B 1 > C 0;  p2: B wins;  p3: A and B draw;  C answered p1 only.
    scores = {
        "A": {"p1": [3.0], "p2": [1.0], "p3": [2.0]},
        "B": {"p1": [1.0], "p2": [2.0], "p3": [2.0]},
        "C": {"p1": [0.0]},
    }
    rates = win_rates(games_from_scores(scores))
    assert rates["A"]["B"] == pytest.approx(1.5 / 3)  # win + loss + draw
    assert rates["B"]["A"] == pytest.approx(1.5 / 3)
    assert rates["A"]["C"] == 1.0 and rates["C"]["A"] == 0.0
    assert rates["B"]["C"] == 1.0
    assert "A" not in rates["A"]


def test_every_sample_meets_every_sample_of_the_other_player():
    # A's samples 1, 3, 4 against B's 2: a loss and two wins.
    games = games_from_scores({"A": {"p": [1.0, 3.0, 4.0]}, "B": {"p": [2.0]}})
    assert len(games) == 3
    assert win_rates(games)["A"]["B"] == pytest.approx(2 / 3)


def test_players_meet_only_on_prompts_both_answered():
    scores = {"A": {"p1": [1.0], "p2": [1.0]}, "B": {"p2": [0.0], "p3": [5.0]}, "X": {"q": [9.0]}}
    t = run_tournament(scores, rounds=50)
    assert len(t.games) == 1  # only p2 is shared by two players
    assert t.win_rates["A"]["B"] == 1.0
    assert t.unmatched == ["X"]
    assert set(t.elo) == {"A", "B"}


def test_expected_score_formula():
    assert expected_score(1000, 1000) == 0.5
    # 400 points ahead means odds of 10 to 1.
    assert expected_score(1400, 1000) == pytest.approx(10 / 11)
    assert expected_score(1000, 1400) == pytest.approx(1 / 11)


def test_two_game_elo_by_hand():
    # K=4 from 1000/1000. Game 1: A beats B at expectation 0.5 -> A 1002, B 998.
    # Game 2: B beats A. B's expectation is 1 / (1 + 10^((1002 - 998) / 400)); B gains 4 * (1 - that).
    r = elo_ratings([Game("A", "B", 1.0), Game("B", "A", 1.0)], k=4)
    e_b = 1 / (1 + 10 ** (4 / 400))
    assert r["B"] == pytest.approx(998 + 4 * (1 - e_b))
    assert r["A"] == pytest.approx(1002 - 4 * (1 - e_b))
    assert r["B"] > r["A"]  # winning the later game, as the underdog, is worth more: online Elo sees order


def test_vectorized_rounds_replay_the_loop_exactly():
    rng = np.random.default_rng(1)
    players = ["A", "B", "C", "D"]
    games = [Game(*rng.choice(players, 2, replace=False), float(rng.choice([0, 0.5, 1]))) for _ in range(60)]
    orders = rng.integers(0, len(games), size=(5, 80))
    batch = elo_rounds(games, orders, players, k=16)
    for r in range(5):
        loop = elo_ratings([games[i] for i in orders[r]], k=16)
        for j, p in enumerate(players):
            assert batch[r, j] == pytest.approx(loop.get(p, 1000.0))


def test_a_player_who_wins_every_game_ranks_first():
    # A > B > C > D on every prompt: the ranking must come out in that order.
    scores = {p: {f"q{i}": [float(v)] for i in range(30)} for p, v in zip("ABCD", (4, 3, 2, 1))}
    t = run_tournament(scores, rounds=200)
    assert t.ranking() == ["A", "B", "C", "D"]
    assert t.win_rates["A"] == {"B": 1.0, "C": 1.0, "D": 1.0}
    assert t.elo["A"].lo > 1000 > t.elo["D"].hi


def test_all_draws_give_equal_ratings():
    scores = {p: {f"q{i}": [0.7] for i in range(10)} for p in "ABC"}
    t = run_tournament(scores, rounds=100)
    for p in "ABC":
        assert (t.elo[p].rating, t.elo[p].lo, t.elo[p].hi) == (1000.0, 1000.0, 1000.0)


def test_symmetric_results_give_equal_ratings():
    # A wins half the prompts, B the other half. Elo is zero-sum (two players: R_A + R_B = 2000 in every
    # round), and the resampling is symmetric in A and B, so both medians sit at 1000 up to resampling noise.
    scores = {"A": {f"q{i}": [float(i % 2)] for i in range(200)}, "B": {f"q{i}": [float(1 - i % 2)] for i in range(200)}}
    elo = bootstrap_elo(games_from_scores(scores), rounds=400)
    assert elo["A"].rating + elo["B"].rating == pytest.approx(2000)
    assert abs(elo["A"].rating - elo["B"].rating) < 10
    assert elo["A"].lo < elo["B"].rating < elo["A"].hi


def test_three_to_one_record_is_about_191_elo_points():
    # Under the Elo model a 3:1 record means odds of 3, i.e. a gap of 400 * log10(3) = 190.8 points.
    games = [Game("A", "B", 1.0 if i % 4 else 0.0) for i in range(2000)]
    elo = bootstrap_elo(games, rounds=200)
    assert elo["A"].rating - elo["B"].rating == pytest.approx(400 * math.log10(3), abs=25)


def test_bootstrap_mean_interval():
    x = np.random.default_rng(0).normal(0.0, 1.0, 400)
    mean, lo, hi = bootstrap_mean_ci(x, rounds=2000)
    assert mean == pytest.approx(x.mean())
    assert lo < mean < hi
    # The normal-theory 95% interval is mean +- 1.96 * s / sqrt(n); the bootstrap should be close to it.
    assert hi - lo == pytest.approx(2 * 1.96 * x.std(ddof=1) / math.sqrt(400), rel=0.15)
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))


# ---------------------------------------------------------------------------------------------------
# Intervals from resampling prompts, not games


def correlated_scores(prompts=40, samples=8):
    """A beats B in every game on the even prompts and loses every game on the odd ones: 64 games per
    prompt that all say the same thing. The information is in 40 prompts, not 2,560 games."""
    return {"A": {f"q{j}": [float(j % 2)] * samples for j in range(prompts)},
            "B": {f"q{j}": [0.5] * samples for j in range(prompts)}}  # fmt: skip


def test_games_know_their_prompt():
    games = games_from_scores({"A": {"p": [1.0, 2.0]}, "B": {"p": [1.5], "q": [0.0]}})
    assert [(g.prompt, g.score) for g in games] == [("p", 0.0), ("p", 1.0)]
    assert Game("A", "B", 1.0).prompt is None  # the old three-field form still builds a game


def test_win_rate_interval_comes_from_prompts_and_is_as_wide_as_40_prompts_allow():
    t = run_tournament(correlated_scores(), rounds=1000)
    w = t.win_rate_intervals["A"]["B"]
    assert (w.rate, w.games, w.prompts) == (0.5, 2560, 40)
    # 40 independent prompts, each all-or-nothing: sd of the rate sqrt(0.25 / 40) = 0.079, so the 95%
    # interval is about 2 * 1.96 * 0.079 = 0.31 wide. Resampling the 2,560 games would give 0.04.
    assert w.hi - w.lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 40), rel=0.25)
    by_game = bootstrap_win_rates(t.games, rounds=1000, resample="game")["A"]["B"]
    assert by_game.hi - by_game.lo == pytest.approx(2 * 1.96 * math.sqrt(0.25 / 2560), rel=0.25)
    assert w.hi - w.lo > 5 * (by_game.hi - by_game.lo)
    back = t.win_rate_intervals["B"]["A"]
    assert (back.rate, back.lo, back.hi) == pytest.approx((1 - w.rate, 1 - w.hi, 1 - w.lo))


def test_elo_interval_comes_from_prompts():
    t = run_tournament(correlated_scores(), rounds=400)
    by_game = bootstrap_elo(t.games, rounds=400, resample="game")
    width = t.elo["A"].hi - t.elo["A"].lo
    assert width > 2 * (by_game["A"].hi - by_game["A"].lo)
    assert t.elo["A"].lo < 1000 < t.elo["A"].hi


def test_every_round_replays_exactly_the_games_of_the_prompts_it_drew():
    scores = {p: {f"q{j}": [float(i + j % 3)] * (1 + j % 3) for j in range(12)} for i, p in enumerate("ABC")}
    games = games_from_scores(scores)
    units = resampling_units(games)
    assert len(units) == 12 and all(len({games[i].prompt for i in u}) == 1 for u in units)
    drawn = bootstrap_draws(len(units), 50, seed=3)
    orders = replay_orders(units, drawn, seed=3)
    for row, order in zip(drawn, orders):
        expected = sorted(i for u in row for i in units[u])
        assert sorted(order[order >= 0].tolist()) == expected
        assert (order[len(expected):] == -1).all()  # padding only at the end


def test_padding_replays_as_no_game():
    rng = np.random.default_rng(2)
    players = ["A", "B", "C"]
    games = [Game(*rng.choice(players, 2, replace=False), float(rng.choice([0, 0.5, 1]))) for _ in range(30)]
    orders = rng.integers(0, len(games), size=(4, 40))
    orders[:, 25:] = -1
    orders[1, 5:9] = -1
    batch = elo_rounds(games, orders, players, k=16)
    for r in range(4):
        loop = elo_ratings([games[i] for i in orders[r] if i >= 0], k=16)
        assert batch[r] == pytest.approx([loop.get(p, 1000.0) for p in players])


def test_games_without_a_prompt_are_resampled_one_by_one():
    games = [Game("A", "B", 1.0 if i % 4 else 0.0) for i in range(200)]
    assert bootstrap_elo(games, rounds=100) == bootstrap_elo(games, rounds=100, resample="game")
    with pytest.raises(ValueError, match="resample must be 'prompt' or 'game'"):
        bootstrap_elo(games, resample="player")


def test_win_rates_with_intervals_agree_with_the_plain_counts():
    scores = {"A": {"p1": [3.0], "p2": [1.0], "p3": [2.0]}, "B": {"p1": [1.0], "p2": [2.0], "p3": [2.0]}, "C": {"p1": [0.0]}}
    games = games_from_scores(scores)
    plain = win_rates(games)
    ci = bootstrap_win_rates(games, rounds=200)
    assert {a: {b: w.rate for b, w in row.items()} for a, row in ci.items()} == plain
    assert (ci["A"]["C"].lo, ci["A"]["C"].hi, ci["A"]["C"].prompts) == (1.0, 1.0, 1)
    # Games given as B-vs-A count for the same pair as A-vs-B.
    mixed = bootstrap_win_rates([Game("A", "B", 1.0, "p"), Game("B", "A", 1.0, "q")], rounds=50)
    assert mixed["A"]["B"].rate == 0.5 and mixed["A"]["B"].games == 2
