"""The figures of an OASST export (Köpf et al., 2023, sections 3-4): languages, roles, flags, tree shapes, rankings,
crowd labels, emojis, and how often the better-ranked reply is the longer one; and a tree rendered as text.

The two export forms store labels and emojis differently; :func:`message_labels` (from the data layer, whose label
filters read it too) and :func:`message_emojis` read both:

* flat (the published HF dataset): ``{"name": [...], "value": [...], "count": [...]}``;
* nested export: ``{"quality": {"value": 0.8, "count": 3}, ...}`` and ``{"+1": 3, ...}``.
"""

from __future__ import annotations

import statistics
import textwrap
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from utils.oasst import Pair, RankGroup, Tree, iter_messages, message_labels  # labels: the data layer reads both forms

Message = dict[str, Any]


# --------------------------------------------------------------------------------------- per message


def message_emojis(m: Message) -> dict[str, int]:
    emojis = m.get("emojis")
    if not emojis:
        return {}
    if "name" in emojis and isinstance(emojis["name"], list):
        return dict(zip(emojis["name"], emojis["count"]))
    return {name: int(n) for name, n in emojis.items()}


def word_count(text: str) -> int:
    return len(text.split())


def all_messages(trees: Iterable[Tree]) -> list[Message]:
    return [m for tree in trees for m in iter_messages(tree)]


# ----------------------------------------------------------------------------------------- counting


def per_language(trees: Sequence[Tree]) -> dict[str, dict[str, int]]:
    """``{lang: {"trees": n, "messages": n}}``, most messages first (a tree's language is its prompt's)."""
    trees_by_lang = Counter(t.lang or "?" for t in trees)
    messages_by_lang = Counter(m.get("lang") or "?" for m in all_messages(trees))
    langs = sorted(set(trees_by_lang) | set(messages_by_lang), key=lambda k: (-messages_by_lang[k], k))
    return {k: {"trees": trees_by_lang[k], "messages": messages_by_lang[k]} for k in langs}


def flag_counts(trees: Sequence[Tree]) -> dict[str, int]:
    """The flags that decide what the training views keep."""
    ms = all_messages(trees)
    return {
        "messages": len(ms),
        "prompter": sum(m["role"] == "prompter" for m in ms),
        "assistant": sum(m["role"] == "assistant" for m in ms),
        "deleted": sum(bool(m.get("deleted")) for m in ms),
        "synthetic": sum(bool(m.get("synthetic")) for m in ms),
        "review_result_true": sum(m.get("review_result") is True for m in ms),
        "review_result_false": sum(m.get("review_result") is False for m in ms),
        "review_result_null": sum(m.get("review_result") is None for m in ms),
        "ranked": sum(m.get("rank") is not None for m in ms),
    }


@dataclass
class TreeShapes:
    """Per tree: messages and depth (messages on the longest thread); per message with replies: how many."""

    sizes: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    replies_per_prompter: list[int] = field(default_factory=list)
    replies_per_assistant: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        def mean(xs: list[int]) -> float:
            return round(statistics.fmean(xs), 2) if xs else float("nan")

        return {
            "tree_size_mean": mean(self.sizes),
            "tree_size_max": max(self.sizes, default=0),
            "tree_depth_mean": mean(self.depths),
            "tree_depth_max": max(self.depths, default=0),
            "replies_per_prompter_mean": mean(self.replies_per_prompter),
            "replies_per_assistant_mean": mean(self.replies_per_assistant),
        }


def tree_shapes(trees: Iterable[Tree]) -> TreeShapes:
    shapes = TreeShapes()
    for tree in trees:
        shapes.sizes.append(tree.size)
        deepest, stack = 0, [(tree.prompt, 1)]
        while stack:
            m, depth = stack.pop()
            deepest = max(deepest, depth)
            if m["replies"]:
                target = shapes.replies_per_prompter if m["role"] == "prompter" else shapes.replies_per_assistant
                target.append(len(m["replies"]))
            stack.extend((r, depth + 1) for r in m["replies"])
        shapes.depths.append(deepest)
    return shapes


def rank_counts(trees: Iterable[Tree]) -> dict[str, Counter]:
    """``rank``: how often each rank value occurs; ``group_size``: ranked replies per ranked message."""
    ranks, sizes = Counter(), Counter()
    for m in all_messages(trees):
        n_ranked = 0
        for r in m["replies"]:
            if r.get("rank") is not None:
                ranks[r["rank"]] += 1
                n_ranked += 1
        if n_ranked:
            sizes[n_ranked] += 1
    return {"rank": ranks, "group_size": sizes}


def label_means(trees: Iterable[Tree]) -> dict[str, dict[str, float]]:
    """Per label: mean value over the messages that carry it, and how many do; by role too."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for m in all_messages(trees):
        for name, v in message_labels(m).items():
            values[name]["all"].append(v)
            values[name][m["role"]].append(v)
    out = {}
    for name in sorted(values, key=lambda k: -len(values[k]["all"])):
        row: dict[str, float] = {"messages": len(values[name]["all"]), "mean": round(statistics.fmean(values[name]["all"]), 3)}
        for role in ("prompter", "assistant"):
            if values[name][role]:
                row[f"mean_{role}"] = round(statistics.fmean(values[name][role]), 3)
        out[name] = row
    return out


def emoji_counts(trees: Iterable[Tree]) -> Counter:
    total: Counter = Counter()
    for m in all_messages(trees):
        total.update(message_emojis(m))
    return total


# ------------------------------------------------------------------------------------- length bias


def length_by_position(groups: Iterable[RankGroup]) -> dict[int, list[int]]:
    """Words of each reply by its place in its ranking group (0 = ranked best)."""
    out: dict[int, list[int]] = defaultdict(list)
    for g in groups:
        for i, reply in enumerate(g.replies):
            out[i].append(word_count(reply))
    return dict(sorted(out.items()))


def longer_chosen_rate(pairs: Sequence[Pair]) -> float:
    """Share of preference pairs whose chosen reply has more words than the rejected one (ties count
    half). 0.5 means length says nothing about preference; well above it, a reward model can score
    well by preferring long answers, a shortcut it will happily learn (Singhal et al., 2023)."""
    if not pairs:
        return float("nan")
    score = 0.0
    for p in pairs:
        chosen, rejected = word_count(p.chosen), word_count(p.rejected)
        score += 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
    return score / len(pairs)


# ---------------------------------------------------------------------------------------- rendering


def pick_example_tree(trees: Sequence[Tree], max_size: int = 14) -> Tree:
    """A tree worth reading: at most ``max_size`` messages, a ranked group, nothing deleted; among
    those the deepest, then the one its reviewers rated best (mean ``quality`` label), ties broken by
    id so the choice is stable."""

    def fits(t: Tree) -> bool:
        ms = list(iter_messages(t))
        ranked = any(sum(r.get("rank") is not None for r in m["replies"]) >= 2 for m in ms)
        return t.size <= max_size and ranked and not any(m.get("deleted") for m in ms)

    def quality(t: Tree) -> float:
        values = [q for m in iter_messages(t) if (q := message_labels(m).get("quality")) is not None]
        return statistics.fmean(values) if values else 0.0

    candidates = [t for t in trees if fits(t)] or list(trees)
    if not candidates:
        raise ValueError("no trees to pick from")
    depth = dict(zip((t.id for t in candidates), tree_shapes(candidates).depths))
    return min(candidates, key=lambda t: (-depth[t.id], -quality(t), t.id))


def render_tree(tree: Tree, width: int = 110) -> str:
    """The tree as indented text: role, rank and flags, then the text cut to one line."""
    lines = [f"tree {tree.id} · {tree.state} · lang {tree.lang} · {tree.size} messages"]

    def walk(m: Message, prefix: str, last: bool, root: bool) -> None:
        tags = [m["role"]]
        if m.get("rank") is not None:
            tags.append(f"rank {m['rank']}")
        tags += [flag for flag in ("deleted", "synthetic") if m.get(flag)]
        branch = "" if root else ("└─ " if last else "├─ ")
        head = f"{prefix}{branch}[{', '.join(tags)}] "
        text = " ".join(m["text"].split())
        lines.append(head + textwrap.shorten(text, max(20, width - len(head)), placeholder=" …"))
        child_prefix = prefix + ("" if root else ("   " if last else "│  "))
        for i, r in enumerate(m["replies"]):
            walk(r, child_prefix, i == len(m["replies"]) - 1, False)

    walk(tree.prompt, "", True, True)
    return "\n".join(lines)
