"""The three training views of OASST trees, with the reference OpenAssistant pipeline's semantics.

This follows ``load_oasst_export`` in LAION-AI/Open-Assistant
(``model/model_training/custom_datasets/oasst_dataset.py``), which walks every root-to-node path
("thread") of a tree depth first and keeps those a per-mode filter accepts:

* a thread is usable when none of its messages is ``deleted`` or ``synthetic`` (``thread_filter``);
  with ``top_k``, also when every assistant message on it has ``rank < top_k``, and an unranked
  assistant message is allowed only as its parent's single reply;
* **sft**: threads of length > 1 ending at a leaf that is an assistant message, or a prompter leaf
  that is its parent's *first* reply; that trailing prompter message is then dropped, so every
  conversation ends with an assistant turn;
* **rm**: threads ending at a prompter message with at least two ranked replies; its assistant
  replies with a rank, sorted by rank (best first), form a group. The replies themselves are not
  filtered (the reference keeps a ranked reply even when it was deleted later). Two replies of the
  same rank state no preference and make no pair (the reference would order them by input position);
* **rl**: every thread ending at a prompter message with no deleted or synthetic message on it
  (``top_k`` does not apply, as in the reference).

Conversations use the kit's format: ``[{"role": "user" | "assistant", "content": str}, ...]``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import count
from typing import Any, Iterable, Iterator

from .trees import Tree, iter_messages

Conversation = list[dict[str, str]]
ROLE = {"prompter": "user", "assistant": "assistant"}


@dataclass
class RankGroup:
    """A prompt and its ranked replies, best first.

    ``ranks``: each reply's rank (None: strictly ordered as listed); ``id``: the prompt message's id,
    which names the group in its pairs.
    """

    prompt: Conversation
    replies: list[str]
    ranks: list[int] | None = None
    id: str | None = None


@dataclass
class Pair:
    """A preference: ``chosen`` was ranked above ``rejected`` as a reply to ``prompt``.

    ``group`` names the ranking the pair came from (pairs of one ranking share it); None: a pair on
    its own, as HH-RLHF's are. The reward loss weighs rankings, not pairs (``utils.reward``).
    """

    prompt: Conversation
    chosen: str
    rejected: str
    group: str | None = None


def to_conversation(thread: list[dict[str, Any]]) -> Conversation:
    return [{"role": ROLE[m["role"]], "content": m["text"]} for m in thread]


def iter_threads(tree: Tree, top_k: int | None = None) -> Iterator[tuple[list[dict[str, Any]], bool, bool]]:
    """Every thread of ``tree`` depth first: ``(path, clean, within_top_k)``.

    ``clean``: no deleted or synthetic message on the path; ``within_top_k``: the ``top_k`` rule holds
    (always True without ``top_k``). ``path`` is one list reused from thread to thread: copy it to keep it.
    Both flags are carried down the walk, so the whole tree costs time linear in its size.
    """
    path: list[dict[str, Any]] = []
    stack = [(tree.prompt, 0, True, True)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth, clean, ok = pop()
        if len(path) > depth:
            del path[depth:]
        path.append(node)
        if clean and (node.get("deleted") or node.get("synthetic")):
            clean = False
        if top_k is not None and ok and depth > 0 and node["role"] == "assistant":
            rank = node.get("rank")
            ok = len(path[-2]["replies"]) == 1 if rank is None else rank < top_k
        yield path, clean, ok
        replies = node["replies"]
        if replies:
            depth += 1
            for child in reversed(replies):
                push((child, depth, clean, ok))


def _is_sft_end(path: list[dict[str, Any]]) -> bool:
    node = path[-1]
    return len(path) > 1 and not node["replies"] and (node["role"] == "assistant" or path[-2]["replies"][0] is node)


def _ranked_replies(node: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The replies forming a ranking group under ``node``, best first, or None when it has no group."""
    if node["role"] != "prompter":
        return None
    ranked = [r for r in node["replies"] if r.get("rank") is not None]
    if len(ranked) < 2:
        return None
    return sorted((r for r in ranked if r["role"] == "assistant"), key=_rank)  # stable: ties keep input order


def _rank(m: dict[str, Any]) -> int:
    return m["rank"]


def sft_conversations(trees: Iterable[Tree], top_k: int | None = None) -> list[Conversation]:
    """The SFT view: one conversation per usable thread, each ending with an assistant reply."""
    out = []
    for tree in trees:
        for path, clean, ok in iter_threads(tree, top_k):
            if clean and ok and _is_sft_end(path):
                out.append(to_conversation(path if path[-1]["role"] == "assistant" else path[:-1]))
    return out


def rm_groups(trees: Iterable[Tree], top_k: int | None = None) -> list[RankGroup]:
    """The reward-model view: a prompt (ending with the user turn) and its replies, best first."""
    out = []
    for tree in trees:
        for path, clean, ok in iter_threads(tree, top_k):
            if clean and ok:
                replies = _ranked_replies(path[-1])
                if replies is not None:
                    out.append(RankGroup(to_conversation(path), [r["text"] for r in replies], [r["rank"] for r in replies],
                                         path[-1]["message_id"]))
    return out


_unnamed_groups = count()  # names for groups built without an id, unique within the process


def preference_pairs(groups: Iterable[RankGroup]) -> list[Pair]:
    """Every ordered pair of a group, the better reply chosen: k strictly ranked replies give k(k-1)/2
    pairs. Replies of equal rank make no pair: a tie says neither was preferred."""
    out = []
    for g in groups:
        name = g.id if g.id is not None else f"unnamed-{next(_unnamed_groups)}"
        ranks = g.ranks
        for i in range(len(g.replies)):
            for j in range(i + 1, len(g.replies)):
                if ranks is None or ranks[i] != ranks[j]:
                    out.append(Pair(g.prompt, g.replies[i], g.replies[j], name))
    return out


def strict_pair_count(ranks: list[int]) -> int:
    """How many pairs of replies with these ranks have a winner: all k(k-1)/2 but the tied ones."""
    k = len(ranks)
    tied = sum(n * (n - 1) // 2 for n in Counter(ranks).values())
    return k * (k - 1) // 2 - tied


def rl_prompts(trees: Iterable[Tree]) -> list[Conversation]:
    """The RL view: every clean thread ending with a user turn, as the prompt for a policy reply."""
    out = []
    for tree in trees:
        for path, clean, _ in iter_threads(tree):
            if clean and path[-1]["role"] == "prompter":
                out.append(to_conversation(path))
    return out


def message_texts(trees: Iterable[Tree]) -> list[str]:
    """The text of every message of ``trees`` but the deleted ones (moderators removed those)."""
    return [m["text"] for tree in trees for m in iter_messages(tree) if not m.get("deleted")]


@dataclass
class ViewCounts:
    sft_threads: int = 0
    rm_groups: int = 0
    rm_pairs: int = 0
    rl_prompts: int = 0


def count_views(trees: Iterable[Tree], top_k: int | None = None) -> ViewCounts:
    """How many items each view holds, in one walk and without building the conversations."""
    c = ViewCounts()
    for tree in trees:
        for path, clean, ok in iter_threads(tree, top_k):
            if not clean:
                continue
            node = path[-1]
            if node["role"] == "prompter":
                c.rl_prompts += 1
                if ok and len(node["replies"]) > 1:  # cheap test first: most prompter nodes have one reply
                    replies = _ranked_replies(node)
                    if replies is not None:
                        c.rm_groups += 1
                        c.rm_pairs += strict_pair_count([r["rank"] for r in replies])
            if ok and not node["replies"] and _is_sft_end(path):
                c.sft_threads += 1
    return c
