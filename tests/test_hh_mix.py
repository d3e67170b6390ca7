"""Helpful against harmless: the HH-RLHF file split by line into training and evaluation parts (disjoint,
deterministic, the same at every weight), HH pairs mixed into reward training at a weight, divided between
the proxy and the judge without overlap, and the sweep's table."""

from __future__ import annotations

import json

import pytest

from utils.oasst import Pair, read_hh_pairs
from utils.reward.stage import mix_hh, split_hh
from utils.reward.training import pair_weights

HH = "data/hh_rlhf_harmless_base_test_part1.jsonl.gz"


def text(p: Pair) -> str:
    return json.dumps([p.prompt, p.chosen, p.rejected])


@pytest.fixture(scope="module")
def hh_pairs():
    return read_hh_pairs(HH)


def test_the_hh_file_splits_by_line_disjoint_and_deterministic(hh_pairs):
    train, evaluation = split_hh(hh_pairs, 0.5, seed=0)
    assert len(train) + len(evaluation) == len(hh_pairs) == 1156
    assert not {text(p) for p in train} & {text(p) for p in evaluation}
    assert abs(len(evaluation) - len(hh_pairs) / 2) <= 2  # half of the distinct lines (a repeated line counts once)
    again = split_hh(list(reversed(hh_pairs)), 0.5, seed=0)  # the order of the lines does not matter
    assert sorted(map(text, again[1])) == sorted(map(text, evaluation))
    other = split_hh(hh_pairs, 0.5, seed=1)[1]
    assert sorted(map(text, other)) != sorted(map(text, evaluation))
    assert split_hh(hh_pairs, 0.0)[1] == [] and split_hh(hh_pairs, 1.0)[0] == []
    with pytest.raises(ValueError, match="hh_eval_fraction must be in"):
        split_hh(hh_pairs, 1.5)


def test_a_repeated_line_stays_on_one_side():
    pairs = [Pair([{"role": "user", "content": f"q{i}"}], "no", "yes") for i in range(20)]
    pairs += [pairs[3], pairs[3], pairs[11]]
    train, evaluation = split_hh(pairs, 0.5)
    assert not {text(p) for p in train} & {text(p) for p in evaluation}
    assert sum(text(p) == text(pairs[3]) for p in train + evaluation) == 3


def test_hh_pairs_mix_in_at_a_share_and_weight_split_between_proxy_and_judge(hh_pairs):
    train, evaluation = split_hh(hh_pairs, 0.5)
    oasst = {"proxy": [Pair([{"role": "user", "content": "x"}], "a", "b", group=f"g{i // 3}") for i in range(300)],
             "judge": [Pair([{"role": "user", "content": "y"}], "a", "b", group=f"h{i // 3}") for i in range(200)]}
    mixed, multipliers, counts = mix_hh(oasst, train, weight=2.0, share=0.5, judge_fraction=0.5)
    assert counts == {"proxy": 150, "judge": 100}
    for name in oasst:
        assert mixed[name][: len(oasst[name])] == oasst[name]
        assert multipliers[name] == [1.0] * len(oasst[name]) + [2.0] * counts[name]
    hh_of = {name: {text(p) for p in mixed[name][len(oasst[name]):]} for name in oasst}
    assert not hh_of["proxy"] & hh_of["judge"]  # the two reward models share no HH line, as they share no OASST tree
    assert (hh_of["proxy"] | hh_of["judge"]) <= {text(p) for p in train}  # and none of the evaluation part
    assert mix_hh(oasst, train, weight=2.0, share=0.5, judge_fraction=0.5)[0] == mixed  # deterministic
    capped = mix_hh(oasst, train, weight=1.0, share=10.0, judge_fraction=0.5)[2]
    assert capped["proxy"] + capped["judge"] == len(train)  # a share beyond the lines there are takes them all
    none, ones, zero = mix_hh(oasst, train, weight=0.0, share=0.5, judge_fraction=0.5)
    assert none == oasst and zero == {"proxy": 0, "judge": 0}
    alone = mix_hh({"proxy": oasst["proxy"], "judge": []}, train, weight=1.0, share=10.0, judge_fraction=0.0)[2]
    assert alone == {"proxy": len(train), "judge": 0}  # no judge: the proxy may use every training line


def test_an_hh_pair_weighs_its_weight_times_one_oasst_ranking():
    ranking = [Pair([{"role": "user", "content": "q"}], "a", "b", group="g")] * 3  # one ranking of 3 replies: 3 pairs
    hh = [Pair([{"role": "user", "content": f"h{i}"}], "no", "yes") for i in range(2)]
    weights = pair_weights(ranking + hh, "group", [1.0, 1.0, 1.0, 2.0, 2.0])
    assert sum(weights[:3]) * 2 == pytest.approx(weights[3]) == pytest.approx(weights[4])
    assert pair_weights(ranking + hh, "flat", [1.0, 1.0, 1.0, 0.5, 0.5]) == [1.0, 1.0, 1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="4 weight multipliers for 5 pairs"):
        pair_weights(ranking + hh, "group", [1.0] * 4)


def test_the_sweep_table_and_plot(tmp_path):
    from recipes.hh_sweep import markdown, plot, sweep_rows

    def metrics(weight, oasst, hh):
        return {"eval_accuracy": oasst, "hh_accuracy": hh, "judge_eval_accuracy": oasst - 0.01, "judge_hh_accuracy": hh + 0.01,
                "pairs_eval": 821, "hh_pairs": 578, "length_baseline_accuracy": 0.697, "hh_length_baseline_accuracy": 0.44,
                "hh_mix": {"pairs_train": {"proxy": 0 if weight == 0 else 225, "judge": 0 if weight == 0 else 225}}}

    rows = sweep_rows({2.0: metrics(2.0, 0.62, 0.58), 0.0: metrics(0.0, 0.65, 0.42)})
    assert [r["hh_weight"] for r in rows] == [0.0, 2.0] and rows[1]["HH pairs (proxy)"] == 225
    table = markdown(rows).splitlines()
    assert table[2].startswith("| 0 | 0 | 0.650 | 0.420 | 0.640 | 0.430 | 821 | 578 |")
    plot(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 1000
