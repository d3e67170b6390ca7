"""The data layer on the real samples, checked against facts and a naive re-statement of the reference."""

from __future__ import annotations

from pathlib import Path

import pytest

import oasst_reference as ref
from utils.oasst import (
    load_split,
    load_trees,
    message_texts,
    preference_pairs,
    read_hh_pairs,
    read_prompts,
    read_trees,
    rl_prompts,
    rm_groups,
    sft_conversations,
    to_pairs_dataset,
    to_prompts_dataset,
    to_sft_dataset,
)

DATA = Path(__file__).resolve().parent.parent / "data"
FLAT = DATA / "oasst1_en_validation_messages.jsonl"
NESTED = DATA / "oasst_en_100_trees.jsonl"
HH = DATA / "hh_rlhf_harmless_base_test_part1.jsonl.gz"
PROMPTS = DATA / "prompt_lottery_en_250.jsonl"


@pytest.fixture(scope="module")
def flat_raw():
    return ref.read_json_lines(FLAT)


@pytest.fixture(scope="module")
def nested_raw():
    return ref.read_json_lines(NESTED)


def test_flat_sample_facts_from_data_readme(flat_raw):
    trees, report = read_trees([FLAT])
    assert report.read == len(flat_raw) == 2022
    assert len({m["message_tree_id"] for m in flat_raw}) == 191
    assert len(trees) == 191 - 3  # three trees lost their root prompt to another language
    assert report.skipped == {"orphaned": 3}
    assert report.kept + 3 == 2022
    assert sum(m["deleted"] for m in flat_raw) == 40
    assert [m["review_result"] for m in flat_raw].count(False) == 53
    assert [m["review_result"] for m in flat_raw].count(None) == 13


def test_nested_sample_facts(nested_raw):
    trees, report = read_trees([NESTED])
    assert len(trees) == 100 and report.read == report.kept == 1167
    assert sum(ref.count_nodes(t["prompt"]) for t in nested_raw) == 1167
    assert {t.id for t in trees} == {t["message_tree_id"] for t in nested_raw}


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_views_match_the_reference_on_the_flat_sample(flat_raw, top_k):
    raw_trees, _ = ref.flat_to_trees(flat_raw)
    expected = [t for t in raw_trees if ref.tree_is_used(t, ["en"])]
    trees, _ = load_trees([FLAT], lang=["en"])
    assert len(trees) == len(expected)
    assert sft_conversations(trees, top_k=top_k) == ref.sft(expected, top_k)
    assert [(g.prompt, g.replies) for g in rm_groups(trees, top_k=top_k)] == ref.rm(expected, top_k)
    assert rl_prompts(trees) == ref.rl(expected)


def test_views_match_the_reference_on_the_nested_sample(nested_raw):
    expected = [t for t in nested_raw if ref.tree_is_used(t, ["en"])]
    trees, _ = load_trees([NESTED])
    assert sft_conversations(trees) == ref.sft(expected)
    assert [(g.prompt, g.replies) for g in rm_groups(trees)] == ref.rm(expected)
    assert rl_prompts(trees) == ref.rl(expected)


def test_view_shapes():
    trees, _ = load_trees([FLAT])
    convs = sft_conversations(trees)
    assert convs and all(c[-1]["role"] == "assistant" and c[0]["role"] == "user" for c in convs)
    assert all(c[i]["role"] == ("user" if i % 2 == 0 else "assistant") for c in convs for i in range(len(c)))
    groups = rm_groups(trees)
    assert all(g.prompt[-1]["role"] == "user" and len(g.replies) >= 2 for g in groups)
    pairs = preference_pairs(groups)
    assert len(pairs) == sum(len(g.replies) * (len(g.replies) - 1) // 2 for g in groups)
    assert all(p[-1]["role"] == "user" for p in rl_prompts(trees))


def test_pairs_put_the_better_ranked_reply_first():
    trees, _ = load_trees([NESTED])
    rank_of = {}
    for tree in trees:
        stack = [tree.prompt]
        while stack:
            m = stack.pop()
            rank_of[m["text"]] = m.get("rank")
            stack.extend(m["replies"])
    pairs = preference_pairs(rm_groups(trees))
    assert pairs and all(rank_of[p.chosen] <= rank_of[p.rejected] for p in pairs)


def test_message_texts_leave_out_deleted_messages(flat_raw):
    trees, _ = load_trees([FLAT])
    raw_trees, orphans = ref.flat_to_trees(flat_raw)
    in_trees = {m["message_id"] for m in flat_raw} - {m["message_id"] for m in orphans}
    expected = [m["text"] for m in flat_raw if m["message_id"] in in_trees and not m["deleted"]]
    assert sorted(message_texts(trees)) == sorted(expected)


def test_load_split_keeps_heldout_trees_out_of_training(flat_raw, nested_raw):
    split = load_split([FLAT], [NESTED], lang=("en",), eval_fraction=0.1, seed=0)
    heldout_ids = {t["message_tree_id"] for t in nested_raw}
    shared = heldout_ids & {m["message_tree_id"] for m in flat_raw}
    assert len(shared) == 6
    train_ids, eval_ids = {t.id for t in split.train}, {t.id for t in split.eval}
    assert not train_ids & eval_ids and not (train_ids | eval_ids) & heldout_ids
    assert len(train_ids | eval_ids) == 188 - 6
    assert len(eval_ids) == round(182 * 0.1)
    assert {t.id for t in split.heldout} == heldout_ids
    shared_messages = sum(1 for m in flat_raw if m["message_tree_id"] in shared)
    assert split.report.skipped["heldout"] == shared_messages
    assert split.report.read == split.report.kept + sum(split.report.skipped.values())


def test_split_is_deterministic_and_depends_on_the_seed():
    a = load_split([FLAT], eval_fraction=0.2, seed=0)
    b = load_split([FLAT], eval_fraction=0.2, seed=0)
    c = load_split([FLAT], eval_fraction=0.2, seed=1)
    assert [t.id for t in a.eval] == [t.id for t in b.eval]
    assert {t.id for t in a.eval} != {t.id for t in c.eval}


def test_hh_pairs():
    raw = ref.read_json_lines(HH)
    pairs = read_hh_pairs(HH)
    assert len(pairs) == len(raw) == 1156
    first = raw[0]["chosen"]
    last_reply = first[first.rindex("\n\nAssistant:") + len("\n\nAssistant:"):].strip()
    assert pairs[0].chosen == last_reply
    assert pairs[0].prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert all(p.prompt[-1]["role"] == "user" for p in pairs)


def test_prompts():
    prompts = read_prompts(PROMPTS)
    assert len(prompts) == 250 and prompts[0] == "Can you tell me about GLaDOS?"


def test_datasets_in_trl_conversational_format():
    trees, _ = load_trees([NESTED])
    convs = sft_conversations(trees)[:4]
    ds = to_sft_dataset(convs)
    assert ds.column_names == ["messages"] and ds[0]["messages"] == convs[0]
    pairs = preference_pairs(rm_groups(trees))[:4]
    ds = to_pairs_dataset(pairs)
    assert ds[1]["prompt"] == pairs[1].prompt
    assert ds[1]["chosen"] == [{"role": "assistant", "content": pairs[1].chosen}]
    assert ds[1]["rejected"] == [{"role": "assistant", "content": pairs[1].rejected}]
    prompts = rl_prompts(trees)[:3]
    assert to_prompts_dataset(prompts)["prompt"] == prompts
