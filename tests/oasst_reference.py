"""A deliberately naive re-statement of the reference OpenAssistant pipeline, for the tests only.

It works on the raw JSON (json module, not orjson), builds trees with plain loops, and applies the
reference's predicates to whole thread lists exactly as ``load_oasst_export`` in LAION-AI/Open-Assistant
writes them (``thread_filter``, ``leaf_filter`` per mode, the trailing-prompter pop), recursing with
fresh path copies. Nothing here is shared with utils/oasst, so agreement means something.
"""

from __future__ import annotations

import gzip
import json


def read_json_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def flat_to_trees(messages):
    """Nested trees (as the export writes them) from flat messages; orphans dropped."""
    messages = [dict(m) for m in messages]
    ids = {m["message_id"] for m in messages}
    for m in messages:
        m["replies"] = [c for c in messages if c["parent_id"] == m["message_id"]]
    roots = [m for m in messages if m["parent_id"] is None]
    orphans = [m for m in messages if m["parent_id"] is not None and m["parent_id"] not in ids]
    trees = [{"message_tree_id": r["message_tree_id"], "tree_state": r["tree_state"], "prompt": r} for r in roots]
    return trees, orphans


def count_nodes(node):
    return 1 + sum(count_nodes(c) for c in node.get("replies") or [])


def tree_is_used(tree, langs):
    p = tree["prompt"]
    return tree["tree_state"] == "ready_for_export" and bool(p.get("review_result")) and p.get("lang") in langs


def visit(node, visitor, predicate, parents=None):
    thread = (parents or []) + [node]
    if predicate(thread):
        visitor(thread)
    for c in node.get("replies") or []:
        visit(c, visitor, predicate, thread)


def threads(tree, mode, top_k=None):
    def thread_filter(thread):
        if any(m.get("deleted") or m.get("synthetic") for m in thread):
            return False
        if top_k is not None:
            for i, m in enumerate(thread):
                if m["role"] == "assistant":
                    if m.get("rank") is None:
                        if i > 0 and len(thread[i - 1]["replies"]) > 1:
                            return False
                    elif m["rank"] >= top_k:
                        return False
        return True

    def leaf_filter(thread):
        last = thread[-1]
        if mode == "sft":
            return (
                len(thread) > 1
                and not last["replies"]
                and (last["role"] == "assistant" or thread[-2]["replies"][0] is last)
                and thread_filter(thread)
            )
        if mode == "rm":
            return (
                last["role"] == "prompter"
                and len([r for r in last["replies"] if r.get("rank") is not None]) > 1
                and thread_filter(thread)
            )
        return last["role"] == "prompter" and not any(m.get("deleted") or m.get("synthetic") for m in thread)

    found = []
    visit(tree["prompt"], found.append, leaf_filter)
    if mode == "sft":
        for t in found:
            if t[-1]["role"] == "prompter":
                t.pop()
    return found


def as_conversation(thread):
    return [{"role": "user" if m["role"] == "prompter" else "assistant", "content": m["text"]} for m in thread]


def sft(trees, top_k=None):
    return [as_conversation(t) for tree in trees for t in threads(tree, "sft", top_k)]


def rm(trees, top_k=None):
    out = []
    for tree in trees:
        for t in threads(tree, "rm", top_k):
            replies = sorted([r for r in t[-1]["replies"] if r["role"] == "assistant" and r.get("rank") is not None], key=lambda r: r["rank"])
            out.append((as_conversation(t), [r["text"] for r in replies]))
    return out


def rl(trees):
    return [as_conversation(t) for tree in trees for t in threads(tree, "rl")]


# A hand-made tree whose views were worked out by hand (tests/test_oasst_reference.py):
#
#   p0 "hi"                       (prompter root)
#   ├── a1 "A" rank 0             (assistant)
#   │   ├── p2 "more?"            (first prompter reply, a leaf: SFT keeps [p0, a1] once)
#   │   └── p3 "other" deleted    (a deleted leaf: in no view)
#   ├── a4 "B" rank 1
#   │   └── p5 "go on"
#   │       └── a6 "C" (unranked, the only reply)
#   └── a7 "D" rank 2 synthetic
def hand_tree() -> dict:
    def m(mid, role, text, rank=None, deleted=False, synthetic=False, replies=()):
        return {"message_id": mid, "role": role, "text": text, "rank": rank, "deleted": deleted,
                "synthetic": synthetic, "replies": list(replies)}  # fmt: skip

    a1 = m("a1", "assistant", "A", 0, replies=[m("p2", "prompter", "more?"), m("p3", "prompter", "other", deleted=True)])
    a4 = m("a4", "assistant", "B", 1, replies=[m("p5", "prompter", "go on", replies=[m("a6", "assistant", "C")])])
    a7 = m("a7", "assistant", "D", 2, synthetic=True)
    root = m("p0", "prompter", "hi", replies=[a1, a4, a7])
    root.update(lang="en", review_result=True)
    return {"message_tree_id": "p0", "tree_state": "ready_for_export", "prompt": root}


def contents(conversations) -> list[list[str]]:
    """Each conversation as its turns' texts, for comparing views by eye."""
    return [[turn["content"] for turn in c] for c in conversations]
