"""Choices of method in the views: ties make no pair, pairs name their ranking group."""

from __future__ import annotations

import json

from utils.oasst import RankGroup, count_views, load_trees, preference_pairs, rm_groups


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
