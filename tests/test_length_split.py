"""Reward-model accuracy split by whether the chosen reply is the longer one (issue 23): where length cannot help."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from utils.pipeline.artifacts import write_metrics
from utils.oasst import Pair
from utils.reward import stage as reward_stage
from utils.reward.__main__ import main as cli_main
from utils.reward.display import accuracy_table, accuracy_views
from utils.reward.evaluation import LENGTH_SUBSETS, evaluate_pairs, format_split, length_split
from utils.reward.params import RewardParams


def prompt(text):
    return [{"role": "user", "content": text}]


class LengthScorer:
    """Scores a reply by its length in characters: "the longer reply wins", as a reward model."""

    def score(self, conversations, batch_size=16):
        return [float(len(c[-1]["content"])) for c in conversations]


class WordScorer:
    """Scores a reply 1 when it says "good", else 0: blind to length."""

    def score(self, conversations, batch_size=16):
        return [float("good" in c[-1]["content"]) for c in conversations]


def mixed_pairs():
    """6 pairs whose chosen reply is longer (6 prompts), 4 where it is shorter (2 prompts), 2 of equal length (1)."""
    longer = [Pair(prompt(f"q{i}"), "good and long " * 3, "bad") for i in range(3)]
    longer += [Pair(prompt(f"w{i}"), "bad but much longer", "good") for i in range(3)]
    shorter = [Pair(prompt(f"r{i % 2}"), "good", "a long bad reply") for i in range(4)]
    same = [Pair(prompt("s"), "good", "badd"), Pair(prompt("s"), "abcd", "efgh")]
    return longer + shorter + same


def test_a_length_scorer_is_right_on_every_longer_preferred_pair_and_wrong_on_every_shorter_preferred_one():
    pairs = mixed_pairs()
    result = evaluate_pairs(LengthScorer(), pairs)
    split = result.by_length
    assert set(split) == set(LENGTH_SUBSETS)
    assert (split["longer_preferred"]["n"], split["shorter_preferred"]["n"], split["same_length"]["n"]) == (6, 4, 2)
    assert sum(part["n"] for part in split.values()) == result.n == len(pairs)
    assert split["longer_preferred"]["accuracy"] == 1.0
    assert split["shorter_preferred"]["accuracy"] == 0.0
    assert split["same_length"]["accuracy"] == 0.5  # equal lengths score equal: ties count half
    assert result.accuracy == pytest.approx(result.length_baseline)  # the scorer is the baseline
    # Every resample of all-right (all-wrong) pairs is all right (all wrong): the interval is a point.
    assert split["longer_preferred"]["ci"] == [1.0, 1.0] and split["shorter_preferred"]["ci"] == [0.0, 0.0]


def test_a_scorer_blind_to_length_scores_what_it_knows_on_each_side():
    result = evaluate_pairs(WordScorer(), mixed_pairs())
    split = result.by_length
    # Longer-preferred: 3 pairs where the chosen reply says "good" (right), 3 where the rejected one does (wrong).
    assert split["longer_preferred"]["accuracy"] == 0.5
    # Shorter-preferred: the chosen reply always says "good": right every time, where "longer wins" never is.
    assert split["shorter_preferred"]["accuracy"] == 1.0
    assert split["same_length"]["accuracy"] == pytest.approx((1 + 0.5) / 2)  # one right, one tie
    # The parts add up to the whole.
    wins = sum(split[k]["accuracy"] * split[k]["n"] for k in LENGTH_SUBSETS)
    assert wins / result.n == pytest.approx(result.accuracy)
    lo, hi = split["longer_preferred"]["ci"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0 and hi - lo > 0


def test_the_interval_resamples_prompts_not_pairs():
    """The same 40 outcomes (half right) from 40 prompts, or from 4 prompts whose pairs all agree: the second
    holds four independent observations, not forty, and its interval must be wider."""
    chosen = [1.0 if i < 20 else 0.0 for i in range(40)]
    rejected = [0.5] * 40
    distinct = [Pair(prompt(f"p{i}"), "long reply", "short") for i in range(40)]
    clustered = [Pair(prompt(f"p{i // 10}"), "long reply", "short") for i in range(40)]
    wide = length_split(clustered, chosen, rejected)["longer_preferred"]
    narrow = length_split(distinct, chosen, rejected)["longer_preferred"]
    assert wide["accuracy"] == narrow["accuracy"] == 0.5 and wide["n"] == narrow["n"] == 40
    assert wide["ci"][1] - wide["ci"][0] > 1.5 * (narrow["ci"][1] - narrow["ci"][0])
    # 4 prompts, 2 all right and 2 all wrong: a resample of 4 prompts has 0..4 right ones, so the interval spans
    # nearly everything; 40 independent coin-flip pairs give about ±0.15.
    assert wide["ci"][0] <= 0.25 and wide["ci"][1] >= 0.75
    assert 0.2 < narrow["ci"][1] - narrow["ci"][0] < 0.4


def test_the_interval_is_reproducible_and_follows_the_seed():
    pairs = [Pair(prompt(f"p{i % 7}"), "long reply", "short") for i in range(30)]
    chosen, rejected = [float(i % 3 != 0) for i in range(30)], [0.5] * 30
    first = length_split(pairs, chosen, rejected)
    assert length_split(pairs, chosen, rejected) == first
    assert length_split(pairs, chosen, rejected, seed=1)["longer_preferred"]["ci"] != first["longer_preferred"]["ci"]


def test_empty_parts_give_nan_and_no_interval_without_crashing():
    empty = length_split([], [], [])
    assert all(part["n"] == 0 and math.isnan(part["accuracy"]) and part["ci"] is None for part in empty.values())
    assert evaluate_pairs(LengthScorer(), []).by_length["shorter_preferred"]["ci"] is None
    only_longer = evaluate_pairs(LengthScorer(), [Pair(prompt("a"), "longer", "short"), Pair(prompt("b"), "longer", "short")])
    assert only_longer.by_length["longer_preferred"]["n"] == 2
    assert math.isnan(only_longer.by_length["shorter_preferred"]["accuracy"])
    assert format_split(only_longer.by_length["shorter_preferred"]) == "- (n=0)"
    # Pairs of one prompt say nothing of how prompts vary: an accuracy, no interval.
    one_prompt = length_split([Pair(prompt("a"), "longer", "short")] * 3, [1.0, 0.0, 1.0], [0.5] * 3)["longer_preferred"]
    assert one_prompt["accuracy"] == pytest.approx(2 / 3) and one_prompt["ci"] is None
    assert format_split(one_prompt) == "0.667 (n=3)"
    with pytest.raises(ValueError, match="pairs"):
        length_split([Pair(prompt("a"), "x", "y")], [1.0, 2.0], [0.0, 1.0])


def test_format_split_is_readable():
    assert format_split({"n": 120, "accuracy": 0.8125, "ci": [0.7413, 0.8791]}) == "0.812 [0.741, 0.879] (n=120)"
    assert format_split({"n": 249, "accuracy": 0.33, "ci": [0.0519, 1.0]}) == "0.330 [0.0519, 1.00] (n=249)"


# ---------------------------------------------------------------------------------------------------
# Stage 03: metrics.json and the notebook's table


def stage_inputs():
    oasst_sets = {"eval split": mixed_pairs()[:8], "100-tree file": mixed_pairs()[8:]}
    oasst = [p for ps in oasst_sets.values() for p in ps]
    hh = [Pair(prompt(f"h{i}"), "I can't help with that.", "Sure, here is how " * (i + 2)) for i in range(5)]
    evaluated = {name: {"OASST held-out": evaluate_pairs(scorer, oasst), "HH-RLHF harmless": evaluate_pairs(scorer, hh)}
                 for name, scorer in (("proxy", LengthScorer()), ("judge", WordScorer()))}
    return oasst_sets, evaluated


def test_stage_metrics_records_the_split_for_every_model_and_held_out_set(tmp_path):
    oasst_sets, evaluated = stage_inputs()
    results = {name: SimpleNamespace(model_dir=tmp_path / name, log_history=[{"loss": 0.7}]) for name in evaluated}
    data = SimpleNamespace(train_sets={"proxy": [1] * 10, "judge": [1] * 4}, trees={"train": [1]}, data_skipped={}, hh_report=None,
                           hh_train=[], hh_eval=[], hh_counts={"proxy": 0, "judge": 0})
    trained = reward_stage.TrainedModels(results, {"proxy": 1.0, "judge": 1.0})
    metrics = reward_stage.stage_metrics(tmp_path, RewardParams(), data, trained, reward_stage.Evaluation({}, evaluated, {}))
    written = json.loads(write_metrics(tmp_path, metrics).read_text())
    split = written["accuracy_by_length"]
    assert set(split) == {"proxy", "judge"}
    for model in split.values():
        assert set(model) == {"OASST held-out", "HH-RLHF harmless"}
        for part in model.values():
            assert set(part) == set(LENGTH_SUBSETS)
            assert all(set(p) == {"n", "accuracy", "ci"} for p in part.values())
    assert split["proxy"]["OASST held-out"]["shorter_preferred"] == {"n": 4, "accuracy": 0.0, "ci": [0.0, 0.0]}
    assert split["judge"]["OASST held-out"]["shorter_preferred"]["accuracy"] == 1.0
    hh = split["proxy"]["HH-RLHF harmless"]
    assert hh["shorter_preferred"]["n"] == 5 and hh["longer_preferred"] == {"n": 0, "accuracy": None, "ci": None}
    assert written["eval_accuracy"] == pytest.approx(evaluated["proxy"]["OASST held-out"].accuracy)  # the old keys stay


def test_accuracy_table_shows_the_split_readably():
    oasst_sets, evaluated = stage_inputs()
    table = accuracy_table(evaluated, oasst_sets)
    assert list(table.index) == ["OASST eval split", "OASST 100-tree file", "OASST held-out, both", "HH-RLHF harmless"]
    assert list(table.columns[:5]) == ["pairs", "proxy", "judge", "length baseline", "agreement"]
    for model in ("proxy", "judge"):
        assert {f"{model} longer-preferred acc (n)", f"{model} shorter-preferred acc (n)"} <= set(table.columns)
    row = table.loc["OASST held-out, both"]
    assert row["proxy longer-preferred acc (n)"] == "1.00 [1.00, 1.00] (n=6)"
    assert row["proxy shorter-preferred acc (n)"] == "0.00 [0.00, 0.00] (n=4)"
    assert row["judge shorter-preferred acc (n)"].startswith("1.00 ") and row["judge shorter-preferred acc (n)"].endswith("(n=4)")
    # The parts are split too: the 100-tree file here holds the last 4 pairs (2 shorter-preferred, 2 same length).
    assert table.loc["OASST 100-tree file", "proxy shorter-preferred acc (n)"].endswith("(n=2)")
    assert table.loc["OASST 100-tree file", "proxy longer-preferred acc (n)"] == "- (n=0)"
    assert table.loc["HH-RLHF harmless", "proxy"] == 0.0 and table["pairs"].dtype.kind == "i"
    assert table.loc["OASST eval split", "proxy"] == 0.75  # 6 longer-preferred pairs right, 2 shorter-preferred wrong
    from utils.reward.stage import agreement

    for part, pairs in oasst_sets.items():  # each part's agreement too (it read NaN), as if evaluated on its own
        alone = agreement(evaluate_pairs(LengthScorer(), pairs), evaluate_pairs(WordScorer(), pairs))
        assert table.loc[f"OASST {part}", "agreement"] == round(alone, 3)
    accuracy, by_length = accuracy_views(table)  # what the notebook shows: two narrow tables
    assert list(accuracy.columns) == ["pairs", "proxy", "judge", "length baseline", "agreement"]
    assert list(by_length.columns) == [(m, f"{side} preferred") for m in ("proxy", "judge") for side in ("longer", "shorter")]
    assert by_length.loc["OASST held-out, both", ("proxy", "shorter preferred")] == "0.00 [0.00, 0.00] (n=4)"
    accuracy.to_html(), by_length.to_html()


# ---------------------------------------------------------------------------------------------------
# python -m utils.reward eval


def test_cli_prints_the_split_one_line_per_part(tmp_path, monkeypatch, capsys):
    import utils.reward.__main__

    monkeypatch.setattr(utils.reward.__main__, "RewardScorer", SimpleNamespace(load=lambda model_dir: LengthScorer()))

    def msg(text, role, rank=None, replies=()):
        return {"message_id": text, "text": text, "role": role, "lang": "en", "rank": rank, "review_result": True,
                "replies": list(replies)}

    # One prompt, three ranked replies: ("first", "second") chosen shorter, ("first", "third") same length,
    # ("second", "third") chosen longer.
    replies = [msg("second", "assistant", 1), msg("first", "assistant", 0), msg("third", "assistant", 2)]
    tree = {"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": msg("question", "prompter", replies=replies)}
    path = tmp_path / "export.jsonl"
    path.write_text(json.dumps(tree) + "\n")
    assert cli_main(["eval", "--model", str(tmp_path), "--pairs", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("accuracy 0.5000 on 3 pairs")
    split = [line for line in lines if line.startswith("  ")]
    assert len(split) == 3
    assert "chosen reply longer" in split[0] and split[0].endswith("accuracy 1.00 (n=1)")
    assert "chosen reply shorter" in split[1] and split[1].endswith("accuracy 0.00 (n=1)")
    assert "same length" in split[2] and split[2].endswith("accuracy 0.500 (n=1)")
