"""The naive OASST reference (tests/oasst_reference.py) checked by hand: the other tests trust it, so it is tested too."""

from __future__ import annotations

from oasst_reference import contents, hand_tree, rl, rm, sft


def test_reference_sft_by_hand():
    assert contents(sft([hand_tree()])) == [["hi", "A"], ["hi", "B", "go on", "C"]]
    assert contents(sft([hand_tree()], top_k=1)) == [["hi", "A"]]


def test_reference_rm_by_hand():
    # the root has three ranked replies; the synthetic one stays in the group (replies are not filtered)
    assert rm([hand_tree()]) == [([{"role": "user", "content": "hi"}], ["A", "B", "D"])]


def test_reference_rl_by_hand():
    assert contents(rl([hand_tree()])) == [["hi"], ["hi", "A", "more?"], ["hi", "B", "go on"]]
