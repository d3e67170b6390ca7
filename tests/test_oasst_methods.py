"""Choices of method in the views: ties make no pair, pairs name their ranking group, SFT-top1 and the
label filters choose the SFT threads, each counted."""

from __future__ import annotations

import json
from pathlib import Path

import oasst_reference as ref
from utils.oasst import (
    RankGroup,
    compare_sft_variants,
    count_views,
    load_split,
    load_trees,
    preference_pairs,
    rm_groups,
    select_sft,
    sft_conversations,
)


def message(mid, role, text, rank=None, replies=()):
    return {"message_id": mid, "role": role, "text": text, "rank": rank, "lang": "en", "review_result": True,
            "replies": list(replies)}  # fmt: skip


def write_tree(path, root):
    path.write_text(json.dumps({"message_tree_id": root["message_id"], "tree_state": "ready_for_export", "prompt": root}) + "\n")
    return path


def test_replies_of_equal_rank_make_no_pair(tmp_path):
    # "first" is ranked 0; "tie a" and "tie b" share rank 1; "last" is ranked 2. Five strict pairs, not six.
    replies = [message("a", "assistant", "tie a", 1), message("b", "assistant", "first", 0),
               message("c", "assistant", "tie b", 1), message("d", "assistant", "last", 2)]
    trees, _ = load_trees([write_tree(tmp_path / "t.jsonl", message("p", "prompter", "q?", replies=replies))])
    groups = rm_groups(trees)
    assert [g.replies for g in groups] == [["first", "tie a", "tie b", "last"]]
    assert groups[0].ranks == [0, 1, 1, 2]
    pairs = [(p.chosen, p.rejected) for p in preference_pairs(groups)]
    assert ("tie a", "tie b") not in pairs and ("tie b", "tie a") not in pairs
    assert pairs == [("first", "tie a"), ("first", "tie b"), ("first", "last"), ("tie a", "last"), ("tie b", "last")]
    counts = count_views(trees)
    assert (counts.rm_groups, counts.rm_pairs) == (1, 5)


def test_a_group_of_two_tied_replies_gives_no_pair(tmp_path):
    replies = [message("a", "assistant", "x", 0), message("b", "assistant", "y", 0)]
    trees, _ = load_trees([write_tree(tmp_path / "t.jsonl", message("p", "prompter", "q?", replies=replies))])
    assert preference_pairs(rm_groups(trees)) == []
    assert count_views(trees).rm_pairs == 0


def test_pairs_carry_the_id_of_their_ranking_group(tmp_path):
    follow = message("p2", "prompter", "and?", replies=[message("c", "assistant", "c0", 0), message("d", "assistant", "c1", 1)])
    replies = [message("a", "assistant", "a0", 0, [follow]), message("b", "assistant", "a1", 1), message("e", "assistant", "a2", 2)]
    trees, _ = load_trees([write_tree(tmp_path / "t.jsonl", message("p1", "prompter", "q?", replies=replies))])
    pairs = preference_pairs(rm_groups(trees))
    assert [p.group for p in pairs] == ["p1", "p1", "p1", "p2"]


def test_hand_built_groups_without_an_id_still_get_distinct_names():
    groups = [RankGroup([{"role": "user", "content": "q"}], ["a", "b", "c"]), RankGroup([{"role": "user", "content": "q"}], ["d", "e"])]
    pairs = preference_pairs(groups) + preference_pairs(groups[:1])
    names = [p.group for p in pairs]
    assert len(set(names[:3])) == 1 and names[3] != names[0] and names[4] not in names[:4]  # a second call: a new name


# ---------------------------------------------------------------------------------------------------
# Which threads SFT trains on: SFT-top1 and the label filters


DATA = Path(__file__).resolve().parent.parent / "data"
FLAT = DATA / "oasst1_en_validation_messages.jsonl"
NESTED = DATA / "oasst_en_100_trees.jsonl"


def labelled(m, **labels):
    """The flat dataset's label form: parallel name / value / count lists."""
    m["labels"] = {"name": list(labels), "value": list(labels.values()), "count": [3] * len(labels)}
    return m


def test_select_sft_defaults_are_the_sft_view_and_top1_is_the_references():
    for path in (FLAT, NESTED):
        trees, _ = load_trees([path])
        assert select_sft(trees).conversations == sft_conversations(trees)
        top1 = select_sft(trees, top_k=1)
        assert top1.conversations == sft_conversations(trees, top_k=1)
        raw = [t for t in ref.read_json_lines(path)] if path == NESTED else ref.flat_to_trees(ref.read_json_lines(path))[0]
        used = [t for t in raw if ref.tree_is_used(t, ["en"])]
        assert top1.counts["threads"] == len(ref.sft(used)) and top1.counts["kept"] == len(ref.sft(used, 1))
        assert top1.counts["removed_by_top_k"] == top1.counts["removed"] == len(ref.sft(used)) - len(ref.sft(used, 1))


def test_each_label_filter_removes_the_threads_it_should(tmp_path):
    #   p "q?" (quality 0.9)
    #   ├── a1 "fine" (quality 0.8)                    -> kept by every filter
    #   ├── a2 "buy now" (spam 1.0)                    -> removed by max_spam
    #   ├── a3 "meh" (quality 0.1, nested label form)  -> removed by min_quality
    #   │   └── p2 "rude" (not_appropriate 0.67)       -> a trailing prompter leaf: not trained on, not judged
    #   └── a4 "unlabelled"                            -> kept, counted as unjudged
    a3 = message("a3", "assistant", "meh", replies=[labelled(message("p2", "prompter", "rude"), not_appropriate=0.67)])
    a3["labels"] = {"quality": {"value": 0.1, "count": 3}}
    replies = [labelled(message("a1", "assistant", "fine"), quality=0.8, spam=0.0, not_appropriate=0.0),
               labelled(message("a2", "assistant", "buy now"), spam=1.0, quality=0.5, not_appropriate=0.0),
               a3, message("a4", "assistant", "unlabelled")]  # fmt: skip
    root = labelled(message("p", "prompter", "q?", replies=replies), quality=0.9, spam=0.0, hate_speech=0.0)
    trees, _ = load_trees([write_tree(tmp_path / "t.jsonl", root)])
    replies_of = lambda sel: [c[-1]["content"] for c in sel.conversations]  # noqa: E731
    assert replies_of(select_sft(trees)) == ["fine", "buy now", "meh", "unlabelled"]
    spam = select_sft(trees, max_spam=0.5)
    assert replies_of(spam) == ["fine", "meh", "unlabelled"]
    assert (spam.counts["removed_by_spam"], spam.counts["removed"], spam.counts["unjudged"]) == (1, 1, 2)
    quality = select_sft(trees, min_quality=0.25)
    assert replies_of(quality) == ["fine", "buy now", "unlabelled"] and quality.counts["removed_by_low_quality"] == 1
    flags = select_sft(trees, max_red_flag=0.5)  # p2's flag is on the dropped prompter leaf: nothing removed
    assert replies_of(flags) == ["fine", "buy now", "meh", "unlabelled"] and flags.counts["removed_by_red_flag"] == 0
    both = select_sft(trees, top_k=1, max_spam=0.5, min_quality=0.25)  # top_k: every reply is unranked but not alone
    assert both.counts == {"threads": 4, "removed_by_top_k": 4, "removed_by_spam": 1, "removed_by_red_flag": 0,
                           "removed_by_low_quality": 1, "removed": 4, "kept": 0, "unjudged": 0}  # fmt: skip


def test_label_filter_counts_on_the_real_sample_match_a_naive_count():
    split = load_split([FLAT], [NESTED])
    raw_trees, _ = ref.flat_to_trees(ref.read_json_lines(FLAT))
    train_ids = {t.id for t in split.train}
    threads = [t for tree in raw_trees if tree["message_tree_id"] in train_ids for t in ref.threads(tree, "sft")]

    def value(m, name):
        labels = m.get("labels") or {"name": [], "value": []}
        return dict(zip(labels["name"], labels["value"])).get(name)

    spam = sum(any((value(m, "spam") or 0) > 0.5 for m in t) for t in threads)
    low = sum(any(value(m, "quality") is not None and value(m, "quality") < 0.25 for m in t) for t in threads)
    counts = select_sft(split.train, max_spam=0.5, min_quality=0.25).counts
    assert counts["threads"] == len(threads) == len(sft_conversations(split.train))
    assert (counts["removed_by_spam"], counts["removed_by_low_quality"]) == (spam, low)
    assert spam > 0 and low > 0  # the sample has both, so the filters are seen to act
    assert counts["kept"] + counts["removed"] == counts["threads"]
    table = compare_sft_variants(split.train)
    assert table["every thread (default)"]["kept"] == len(threads)
    assert table["SFT-top1 (top_k=1)"]["kept"] == len(sft_conversations(split.train, top_k=1))
