"""Scripted rewards for learning how RL behaves: each is a plain function usable as a stage's ``reward_function``.

``count_the`` is the smoke test of an RL loop: the number of times the word "the" appears in a reply is easy to
raise (say "the" more often, or write longer replies that contain it), so a loop that works raises it within a few
updates and a broken one (wrong sign, no gradient, off-policy samples) does not. ``words`` rewards length alone,
the bias most reward models learn: watch a policy grow its replies, and what the KL penalty does about it.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

THE = re.compile(r"\bthe\b", re.IGNORECASE)


def count_the(prompts: Sequence[list[dict[str, Any]]], replies: Sequence[str]) -> list[float]:
    """How many times the word "the" appears in each reply."""
    return [float(len(THE.findall(reply))) for reply in replies]


def words(prompts: Sequence[list[dict[str, Any]]], replies: Sequence[str]) -> list[float]:
    """Each reply's length in words: a reward that only length can satisfy."""
    return [float(len(reply.split())) for reply in replies]
