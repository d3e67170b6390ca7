"""The naive OASST reference (tests/oasst_reference.py) checked by hand: the other tests trust it, so it is tested too."""

from __future__ import annotations

from oasst_reference import rl, rm, sft


# The naive reference itself, on a hand-made tree whose views were worked out by hand:
#
#   p0 "hi"                       (prompter root)
#   ├── a1 "A" rank 0             (assistant)
#   │   ├── p2 "more?"            (first prompter reply, a leaf: SFT keeps [p0, a1] once)
#   │   └── p3 "other" deleted    (a deleted leaf: in no view)
#   ├── a4 "B" rank 1
#   │   └── p5 "go on"
#   │       └── a6 "C" (unranked, the only reply)
#   └── a7 "D" rank 2 synthetic
def _hand_tree():
    def m(mid, role, text, rank=None, deleted=False, synthetic=False, replies=()):
        return {"message_id": mid, "role": role, "text": text, "rank": rank, "deleted": deleted,
                "synthetic": synthetic, "replies": list(replies)}  # fmt: skip

    a1 = m("a1", "assistant", "A", 0, replies=[m("p2", "prompter", "more?"), m("p3", "prompter", "other", deleted=True)])
    a4 = m("a4", "assistant", "B", 1, replies=[m("p5", "prompter", "go on", replies=[m("a6", "assistant", "C")])])
    a7 = m("a7", "assistant", "D", 2, synthetic=True)
    root = m("p0", "prompter", "hi", replies=[a1, a4, a7])
    root.update(lang="en", review_result=True)
    return {"message_tree_id": "p0", "tree_state": "ready_for_export", "prompt": root}


def _texts(convs):
    return [[t["content"] for t in c] for c in convs]


def test_reference_sft_by_hand():
    assert _texts(sft([_hand_tree()])) == [["hi", "A"], ["hi", "B", "go on", "C"]]
    assert _texts(sft([_hand_tree()], top_k=1)) == [["hi", "A"]]


def test_reference_rm_by_hand():
    # the root has three ranked replies; the synthetic one stays in the group (replies are not filtered)
    assert rm([_hand_tree()]) == [([{"role": "user", "content": "hi"}], ["A", "B", "D"])]


def test_reference_rl_by_hand():
    assert _texts(rl([_hand_tree()])) == [["hi"], ["hi", "A", "more?"], ["hi", "B", "go on"]]
