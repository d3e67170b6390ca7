"""utils.explore on hand-made trees and on the real sample, against plain recomputations."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import pytest

import oasst_reference as ref
from utils.explore import counts
from utils.oasst import Pair, RankGroup, read_trees

DATA = Path(__file__).resolve().parent.parent / "data"
FLAT = DATA / "oasst1_en_validation_messages.jsonl"


@pytest.fixture(scope="module")
def sample():
    raw = ref.read_json_lines(FLAT)
    _, orphans = ref.flat_to_trees(raw)
    in_trees = [m for m in raw if m["message_id"] not in {o["message_id"] for o in orphans}]
    trees, _ = read_trees([FLAT])
    return trees, in_trees


@pytest.fixture()
def hand_tree(tmp_path):
    path = tmp_path / "hand.jsonl"
    path.write_text(json.dumps(ref.hand_tree()) + "\n")
    return read_trees([path])[0][0]


def test_labels_and_emojis_in_both_export_forms():
    flat = {"labels": {"name": ["quality", "humor"], "value": [0.75, None], "count": [3, 0]}, "emojis": {"name": ["+1", "-1"], "count": [4, 1]}}
    nested = {"labels": {"quality": {"value": 0.75, "count": 3}, "humor": {"value": None, "count": 0}}, "emojis": {"+1": 4, "-1": 1}}
    for m in (flat, nested):
        assert counts.message_labels(m) == {"quality": 0.75}
        assert counts.message_emojis(m) == {"+1": 4, "-1": 1}
    assert counts.message_labels({"labels": None}) == {} and counts.message_emojis({}) == {}


def test_flags_and_languages_on_the_sample(sample):
    trees, msgs = sample
    flags = counts.flag_counts(trees)
    assert flags["messages"] == len(msgs) == 2019
    assert flags["deleted"] == sum(m["deleted"] for m in msgs) == 40
    assert flags["review_result_false"] == sum(m["review_result"] is False for m in msgs)
    assert flags["review_result_null"] == sum(m["review_result"] is None for m in msgs)
    assert flags["prompter"] + flags["assistant"] == flags["messages"]
    assert flags["ranked"] == sum(m["rank"] is not None for m in msgs)
    assert counts.per_language(trees) == {"en": {"trees": 188, "messages": 2019}}


def test_tree_shapes(sample, hand_tree):
    shapes = counts.tree_shapes([hand_tree])
    assert shapes.sizes == [8] and shapes.depths == [4]
    assert shapes.replies_per_prompter == [3, 1] and sorted(shapes.replies_per_assistant) == [1, 2]

    trees, msgs = sample
    parent = {m["message_id"]: m["parent_id"] for m in msgs}

    def depth(mid):
        return 1 if parent[mid] is None else 1 + depth(parent[mid])

    tree_of = {m["message_id"]: m["message_tree_id"] for m in msgs}
    deepest = Counter()
    for mid in parent:
        deepest[tree_of[mid]] = max(deepest[tree_of[mid]], depth(mid))
    shapes = counts.tree_shapes(trees)
    assert sorted(shapes.depths) == sorted(deepest.values())
    assert sum(shapes.sizes) == 2019
    n_children = Counter(m["parent_id"] for m in msgs if m["parent_id"])
    assert sum(shapes.replies_per_prompter) + sum(shapes.replies_per_assistant) == sum(n_children.values())


def test_rank_counts_and_label_means(sample):
    trees, msgs = sample
    ranks = counts.rank_counts(trees)
    assert ranks["rank"] == Counter(m["rank"] for m in msgs if m["rank"] is not None)
    ranked_siblings = Counter(m["parent_id"] for m in msgs if m["rank"] is not None)
    assert ranks["group_size"] == Counter(ranked_siblings.values())
    quality = [v for m in msgs if m["labels"] for n, v in zip(m["labels"]["name"], m["labels"]["value"]) if n == "quality"]
    means = counts.label_means(trees)
    assert means["quality"]["messages"] == len(quality)
    assert means["quality"]["mean"] == pytest.approx(statistics.fmean(quality), abs=1e-3)


def test_emoji_counts(sample):
    trees, msgs = sample
    expected = Counter()
    for m in msgs:
        if m["emojis"]:
            expected.update(dict(zip(m["emojis"]["name"], m["emojis"]["count"])))
    assert counts.emoji_counts(trees) == expected


def test_length_bias_measures():
    groups = [RankGroup([], ["one two three", "one", "a b"]), RankGroup([], ["x y", "p q"])]
    assert counts.length_by_position(groups) == {0: [3, 2], 1: [1, 2], 2: [2]}
    pairs = [Pair([], "a b c", "a"), Pair([], "a", "a b"), Pair([], "a b", "c d")]
    assert counts.longer_chosen_rate(pairs) == pytest.approx((1 + 0 + 0.5) / 3)


def test_render_tree(hand_tree):
    lines = counts.render_tree(hand_tree).splitlines()
    assert lines[0] == "tree p0 · ready_for_export · lang en · 8 messages"
    assert lines[1:] == [
        "[prompter] hi",
        "├─ [assistant, rank 0] A",
        "│  ├─ [prompter] more?",
        "│  └─ [prompter, deleted] other",
        "├─ [assistant, rank 1] B",
        "│  └─ [prompter] go on",
        "│     └─ [assistant] C",
        "└─ [assistant, rank 2, synthetic] D",
    ]


def test_pick_example_tree_is_readable_and_stable(sample):
    trees, _ = sample
    tree = counts.pick_example_tree(trees)
    assert counts.pick_example_tree(trees[::-1]).id == tree.id
    messages = counts.all_messages([tree])
    assert len(messages) <= 14 and not any(m["deleted"] for m in messages)
    assert any(sum(r["rank"] is not None for r in m["replies"]) >= 2 for m in messages)


def test_an_example_tree_id_not_in_the_files_is_one_line_naming_them():
    from utils.explore.params import ExploreParams
    from utils.explore.stage import explore
    from utils.params import ParameterError

    with pytest.raises(ParameterError, match=r"^01_explore_trees: example_tree_id 'nope' is no tree of data/oasst1_en_validation_messages.jsonl$"):
        explore(ExploreParams(example_tree_id="nope"))
