"""Properties over generated forests: order does not matter, nothing is lost, views match the reference."""

from __future__ import annotations

import json
import os
import tempfile

from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oasst_reference as ref
from utils.oasst import count_views, iter_messages, preference_pairs, read_trees, rl_prompts, rm_groups, sft_conversations
from utils.oasst.records import ROLES, TYPED_FIELDS, check_message

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def forests(draw, max_messages=40):
    """Flat OASST messages of a few trees: roles alternate by depth, with random deleted / synthetic /
    rank / review flags, some messages whose parent is missing (orphans), in generation order."""
    n = draw(st.integers(1, max_messages))
    messages = []
    for i in range(n):
        parent = None if i == 0 else draw(st.one_of(st.none(), st.integers(0, i - 1), st.just(-1)))
        if parent is None:
            depth, tree = 0, f"m{i}"
        elif parent == -1:  # an orphan: its parent is in no input
            depth, tree = draw(st.integers(1, 3)), f"gone{i}"
        else:
            depth, tree = messages[parent]["_depth"] + 1, messages[parent]["message_tree_id"]
        role = ROLES[depth % 2]
        messages.append({
            "message_id": f"m{i}",
            "parent_id": None if parent is None else (f"gone{i}" if parent == -1 else f"m{parent}"),
            "text": f"t{i}",
            "role": role,
            "lang": draw(st.sampled_from(["en", "en", "de"])),
            "review_result": draw(st.sampled_from([True, True, False, None])),
            "deleted": draw(st.booleans()) and draw(st.booleans()),
            "synthetic": draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()),
            "rank": draw(st.one_of(st.none(), st.integers(0, 3))) if role == "assistant" else None,
            "tree_state": draw(st.sampled_from(["ready_for_export", "ready_for_export", "growing"])),
            "message_tree_id": tree,
            "_depth": depth,
        })  # fmt: skip
    for m in messages:
        del m["_depth"]
    return messages


def tree_shapes(trees):
    """Order-free description: per tree, the set of (message, parent) links."""
    return sorted((t.id, t.size, frozenset((m["message_id"], m.get("parent_id")) for m in iter_messages(t))) for t in trees)


@SETTINGS
@given(forests(), st.randoms())
def test_shuffled_input_gives_the_same_trees(messages, rnd):
    shuffled = list(messages)
    rnd.shuffle(shuffled)
    a, report_a = read_trees([Dataset.from_list(messages)])
    b, report_b = read_trees([Dataset.from_list(shuffled)])
    assert tree_shapes(a) == tree_shapes(b)
    assert (report_a.read, report_a.kept, report_a.skipped) == (report_b.read, report_b.kept, report_b.skipped)
    position = {m["message_id"]: i for i, m in enumerate(shuffled)}
    for tree in b:  # children keep the order of the (shuffled) input
        for m in iter_messages(tree):
            assert [position[r["message_id"]] for r in m["replies"]] == sorted(position[r["message_id"]] for r in m["replies"])


@SETTINGS
@given(forests(), st.lists(st.sampled_from(["json", "type", "dup", "field"]), max_size=5), st.randoms())
def test_read_equals_kept_plus_skipped(messages, damage, rnd):
    lines = [dict(m) for m in messages]
    for kind in damage:
        i = rnd.randrange(len(lines))
        if kind == "json":
            lines[i] = "{not json"
        elif kind == "type" and isinstance(lines[i], dict):
            lines[i]["deleted"] = "yes"
        elif kind == "dup" and isinstance(lines[i], dict):
            lines.append(dict(lines[i]))
        elif kind == "field" and isinstance(lines[i], dict):
            lines[i].pop("text", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.jsonl")
        with open(path, "w") as f:
            for line in lines:
                f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
        trees, report = read_trees([path], on_error="skip")
    assert report.read == len(lines)
    assert report.read == report.kept + sum(report.skipped.values())
    assert report.kept == sum(t.size for t in trees) == sum(1 for t in trees for _ in iter_messages(t))


@SETTINGS
@given(forests(), st.sampled_from([None, 1, 2]))
def test_views_match_the_reference(messages, top_k):
    raw_trees, _ = ref.flat_to_trees(messages)
    used = [t for t in raw_trees if ref.tree_is_used(t, ["en"])]
    trees, _ = read_trees([Dataset.from_list(messages)])
    trees = [t for t in trees if t.state == "ready_for_export" and t.prompt["review_result"] and t.lang == "en"]
    sft = sft_conversations(trees, top_k=top_k)
    groups = rm_groups(trees, top_k=top_k)
    rl = rl_prompts(trees)
    assert sft == ref.sft(used, top_k)
    assert [(g.prompt, g.replies) for g in groups] == ref.rm(used, top_k)
    assert rl == ref.rl(used)
    counts = count_views(trees, top_k)
    pairs = preference_pairs(groups)
    assert (counts.sft_threads, counts.rm_groups, counts.rm_pairs, counts.rl_prompts) == (len(sft), len(groups), len(pairs), len(rl))


VALUES = st.one_of(st.none(), st.text(max_size=3), st.booleans(), st.integers(-2, 5), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: VALUES for k in ["message_id", "text", "role", *[k for k, _ in TYPED_FIELDS]]}), st.sampled_from(ROLES), st.booleans())
def test_record_check_is_exactly_the_schema(record, role, valid_role):
    record = dict(record)
    if isinstance(record.get("role"), str) and valid_role:
        record["role"] = role
    expected_ok = (
        all(type(record.get(k)) is str for k in ("message_id", "text", "role"))
        and record["role"] in ROLES
        and all(record.get(k) is None or type(record[k]) is t for k, t in TYPED_FIELDS)
    )
    assert (check_message(record) is None) == expected_ok
