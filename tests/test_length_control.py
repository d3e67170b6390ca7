"""Length-controlled win rates (utils.evaluate.length_control): a player that wins only by length has an LC win rate near
one half, a player that wins at equal length keeps its win, and the fit recovers known coefficients."""

from __future__ import annotations

import numpy as np
import pytest

from utils.evaluate.length_control import (LengthGames, fit_length_glm, lc_rows, lc_win_rate, length_controlled,
                                  length_controlled_table, length_games)


def test_fit_recovers_the_coefficients_of_simulated_verdicts():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20000)
    p = 1 / (1 + np.exp(-(0.4 + 1.5 * x)))
    theta, phi = fit_length_glm(rng.binomial(1, p).astype(float), x)
    assert theta == pytest.approx(0.4, abs=0.05)
    assert phi == pytest.approx(1.5, abs=0.08)


def test_a_player_that_wins_only_by_length_has_an_lc_win_rate_near_one_half():
    rng = np.random.default_rng(1)
    diffs = rng.normal(10, 20, 4000)  # the player is usually longer
    outcomes = (rng.uniform(size=4000) < 1 / (1 + np.exp(-2 * np.tanh(diffs / diffs.std())))).astype(float)
    games = LengthGames(outcomes, diffs, np.arange(4000) // 4)
    lc, phi = lc_win_rate(games)
    assert outcomes.mean() > 0.6  # the raw win rate rewards the length
    assert lc == pytest.approx(0.5, abs=0.04)
    assert phi > 1.5


def test_a_player_that_wins_at_equal_length_keeps_its_win():
    games = LengthGames(np.array([1.0, 1.0, 1.0, 0.0] * 50), np.zeros(200), np.arange(200))
    lc, _ = lc_win_rate(games)
    assert lc == pytest.approx(0.75, abs=1e-3)  # no length difference: the LC win rate is the raw one


def test_draws_count_half_and_games_pair_every_answer_on_shared_prompts():
    player = {"a": [1.0, 0.0], "b": [2.0], "only-player": [5.0]}
    base = {"a": [0.5], "b": [2.0]}
    games = length_games(player, base, {"a": [30, 10], "b": [20], "only-player": [1]}, {"a": [20], "b": [25]})
    assert games.outcomes.tolist() == [1.0, 0.0, 0.5]
    assert games.length_diffs.tolist() == [10.0, -10.0, -5.0]
    assert games.prompts.tolist() == [0, 0, 1]


def test_interval_resamples_prompts_and_contains_the_estimate():
    rng = np.random.default_rng(2)
    prompts = np.repeat(np.arange(40), 3)
    diffs = rng.normal(0, 15, 120)
    outcomes = (rng.uniform(size=120) < 0.7).astype(float)
    r = length_controlled(LengthGames(outcomes, diffs, prompts), rounds=300, seed=0)
    assert r["ci"][0] < r["lc_win_rate"] < r["ci"][1]
    assert r["win_rate_ci"][0] < r["win_rate"] < r["win_rate_ci"][1]
    assert r["games"] == 120 and r["prompts"] == 40
    again = length_controlled(LengthGames(outcomes, diffs, prompts), rounds=300, seed=0)
    assert again == r  # reproducible with the seed


def test_table_has_every_judge_and_player_against_the_baseline_and_reads_as_text():
    scores = {"judge": {"sft": {"p1": [0.0], "p2": [0.0]}, "ppo": {"p1": [1.0], "p2": [-1.0]}},
              "proxy": {"sft": {"p1": [0.0], "p2": [0.0]}, "ppo": {"p1": [1.0], "p2": [1.0]}}}
    words = {"sft": {"p1": [10], "p2": [10]}, "ppo": {"p1": [20], "p2": [5]}}
    table = length_controlled_table(scores, words, "sft", ["sft", "ppo"], rounds=50)
    assert set(table) == {"judge", "proxy"} and set(table["judge"]) == {"ppo"}
    assert {"lc_win_rate", "ci", "win_rate"} <= set(table["judge"]["ppo"])
    assert table["judge"]["ppo"]["win_rate"] == 0.5 and table["proxy"]["ppo"]["win_rate"] == 1.0
    rows = lc_rows(table, {"proxy": "proxy*"})
    assert rows[0]["player"] == "ppo" and "→ LC" in rows[0]["proxy*"] and rows[0]["words vs baseline"] == "+2.5"


def test_no_common_prompt_gives_no_figure_and_no_crash():
    r = length_controlled(LengthGames(np.array([]), np.array([]), np.array([], dtype=int)))
    assert r["lc_win_rate"] is None and r["games"] == 0
