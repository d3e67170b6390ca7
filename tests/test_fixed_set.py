"""The fixed set (utils/rl/fixed_set.py): gains paired by prompt, best-of-n from shared samples, the RL verdict."""

from __future__ import annotations

import math

import pytest

from utils.evaluate.reward_vs_kl import rl_check
from utils.rl.fixed_set import WORDS, best_of_n_kl, best_of_n_scores, mean_se, paired_gain, point


def test_paired_gain_removes_the_prompts_difficulty():
    # Prompt a is easy, b hard: the player beats the baseline by exactly 0.1 on each, so the gain is 0.1 with no spread.
    base = {"a": [5.0, 5.2], "b": [-3.0, -3.2]}
    player = {"a": [5.2, 5.2], "b": [-3.0, -3.0]}
    assert paired_gain(player, base) == pytest.approx((0.1, 0.0))
    # Unpaired, the same numbers carry the prompts' spread (8 points apart): a standard error of about 4.
    assert mean_se(player)[1] == pytest.approx(4.1, abs=0.01)


def test_paired_gain_pairs_on_the_prompts_both_answered():
    assert paired_gain({"a": [1.0], "b": [3.0], "c": [100.0]}, {"a": [0.0], "b": [1.0]}) == pytest.approx((1.5, 0.5))
    with pytest.raises(ValueError, match="no prompt in common"):
        paired_gain({"a": [1.0]}, {"z": [1.0]})


def test_best_of_n_picks_the_selectors_favourite_in_each_disjoint_group():
    scores = {"proxy": {"p": [0.1, 0.9, 0.5, 0.2]}, "judge": {"p": [1.0, 2.0, 3.0, 4.0]}, WORDS: {"p": [10, 20, 30, 40]}}
    best2 = best_of_n_scores(scores, 2)
    assert best2["proxy"]["p"] == [0.9, 0.5] and best2["judge"]["p"] == [2.0, 3.0] and best2[WORDS]["p"] == [20, 30]
    assert best_of_n_scores(scores, 4)["judge"]["p"] == [2.0]
    with pytest.raises(ValueError, match="best-of-3 needs a multiple of 3"):
        best_of_n_scores(scores, 3)
    assert best_of_n_kl(1) == 0.0 and best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


def test_point_reports_every_rewards_gain_and_the_length_gain():
    base = {"proxy": {"a": [0.0, 0.0], "b": [1.0, 1.0]}, "judge": {"a": [0.0, 0.0], "b": [0.0, 0.0]}, WORDS: {"a": [10, 10], "b": [20, 20]}}
    mine = {"proxy": {"a": [0.2, 0.4], "b": [1.1, 1.3]}, "judge": {"a": [0.0, 0.0], "b": [0.0, 0.2]}, WORDS: {"a": [12, 12], "b": [22, 24]}}
    row = point("ppo@4", mine, base, [[0.5, 1.5], [1.0, 1.0]], ended=[[True, False], [True, True]], update=4)
    assert row["proxy_gain"] == pytest.approx(0.25) and row["judge_gain"] == pytest.approx(0.05)
    assert row["gains"][WORDS][0] == pytest.approx(2.5) and row["words"] == pytest.approx(17.5)
    assert row["kl"] == pytest.approx(1.0) and row["kl_se"] == pytest.approx(0.0)
    assert row["ended_fraction"] == 0.75 and row["capped_fraction"] == 0.25 and row["update"] == 4


def test_rl_check_reads_the_last_snapshot_of_each_rl_stage():
    def p(player, gain, se, kl, **extra):
        return {"player": player, "proxy_gain": gain, "proxy_gain_se": se, "kl": kl, "judge_gain": 0.0, "judge_gain_se": 0.01,
                "gains": {WORDS: [1.0, 0.5]}, **extra}
    points = [p("sft", 0.0, 0.0, 0.0), p("best_of_2", 0.03, 0.005, 0.19, n=2), p("ppo@0", 0.0, 0.0, 0.0, update=0),
              p("ppo@12", 0.05, 0.01, 2.0, update=12), p("ppo@6", 0.01, 0.01, 1.0, update=6), p("rloo@8", 0.02, 0.015, 4.0, update=8)]
    rows = {r["player"]: r for r in rl_check(points, target_kl=3.0)}
    assert set(rows) == {"ppo@12", "rloo@8"}
    assert rows["ppo@12"]["≥ best_of_2"].startswith("yes") and rows["ppo@12"]["> 2 s.e."] == "yes"
    assert rows["ppo@12"]["KL ≤ target"].startswith("yes")
    assert rows["rloo@8"]["≥ best_of_2"].startswith("no") and rows["rloo@8"]["> 2 s.e."] == "no"
    assert rows["rloo@8"]["KL ≤ target"].startswith("no")


def test_rl_check_pairs_the_snapshot_with_best_of_2_prompt_by_prompt():
    """"no" by less than the paired difference's standard error cannot tell the two apart: the row says by how much."""
    base = {"proxy": {"a": [0.0, 0.0], "b": [1.0, 1.0], "c": [2.0, 2.0]}}
    best = point("best_of_2", {"proxy": {"a": [0.1, 0.1], "b": [1.1, 1.1], "c": [2.1, 2.1]}}, base, 0.19, n=2)
    rl = point("rloo@8", {"proxy": {"a": [0.0, 0.2], "b": [1.0, 1.0], "c": [2.1, 2.3]}}, base, [[1.0], [1.0], [1.0]], update=8)
    assert rl["proxy_gain_by_prompt"] == pytest.approx([0.1, 0.0, 0.2])
    (row,) = rl_check([base_point := point("sft", base, base, None), best, rl], target_kl=3.0)
    assert base_point["proxy_gain_by_prompt"] == [0.0, 0.0, 0.0]
    # differences 0.0, -0.1, +0.1: mean 0, standard error 0.1 / sqrt(3)
    assert row["≥ best_of_2"] == f"yes (+0.100; +0.000 ± {0.1 / 3 ** 0.5:.3f})"
    worse = point("rloo@8", {"proxy": {"a": [0.0, 0.0], "b": [1.1, 1.1], "c": [2.1, 2.1]}}, base, [[1.0], [1.0], [1.0]], update=8)
    (row,) = rl_check([best, worse], target_kl=3.0)
    assert row["≥ best_of_2"] == f"no (+0.100; -0.033 ± {0.1 / 3:.3f})"
    del best["proxy_gain_by_prompt"]  # a metrics.json from before the per-prompt gains: the verdict alone
    assert rl_check([best, worse], target_kl=3.0)[0]["≥ best_of_2"] == "no (+0.100)"
