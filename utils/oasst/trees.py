"""Conversation trees from flat messages (any order) or nested export trees, and which trees are usable.

A tree's messages stay the dicts that were read, every field kept, each with a ``replies`` list added
(flat input) or kept (nested input): both forms end up shaped like OpenAssistant's nested export.
Children keep the order in which they appear in the input, which matters: the SFT view takes a
prompter leaf only when it is its parent's *first* reply, as the reference pipeline does.

Building is linear: one dict from id to message, one pass linking children, one walk from the roots.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from .records import DataError, ErrorPolicy, OnError, Report, Source, check_message, iter_records, source_name

READY = "ready_for_export"


@dataclass(slots=True)
class Tree:
    """One conversation tree: ``prompt`` is the root message, replies nested under ``"replies"``."""

    id: str
    state: str | None
    prompt: dict[str, Any]
    size: int  # number of messages
    source: str
    origin: str | None = None

    @property
    def lang(self) -> str | None:
        return self.prompt.get("lang")


def iter_messages(tree: Tree) -> Iterator[dict[str, Any]]:
    """Every message of ``tree``, depth first, replies in order."""
    stack = [tree.prompt]
    while stack:
        m = stack.pop()
        yield m
        stack.extend(reversed(m["replies"]))


def read_trees(sources: Iterable[Source], on_error: OnError = "raise") -> tuple[list[Tree], Report]:
    """All trees of ``sources`` (flat and nested forms may be mixed) and the account of what was read.

    Messages whose parent is not in the input (every single-language subset has some) are skipped with
    their subtrees and counted as ``orphaned``; that is never an error.
    """
    report = Report()
    builder = _Builder(ErrorPolicy(on_error, report))
    with _no_gc():
        for source in sources:
            builder.add(source)
        trees = builder.finish()
    report.kept = sum(t.size for t in trees)
    assert report.balanced(), f"internal error: read {report.read} != kept {report.kept} + skipped {report.n_skipped}"
    return trees, report


def usable_reason(tree: Tree, lang: Sequence[str] | None) -> str | None:
    """Why the reference pipeline would leave ``tree`` out, or None when it is used."""
    if tree.state != READY:
        return "tree_not_ready_for_export"
    if not tree.prompt.get("review_result"):
        return "prompt_not_accepted_in_review"
    if lang is not None and tree.lang not in lang:
        return "lang_not_selected"
    return None


def select_trees(trees: list[Tree], report: Report, lang: Sequence[str] | None) -> list[Tree]:
    """The usable trees; the others' messages move from kept to skipped in ``report``."""
    kept = []
    for tree in trees:
        reason = usable_reason(tree, lang)
        if reason is None:
            kept.append(tree)
        else:
            report.drop_kept(reason, tree.size)
    return kept


def normalize_lang(lang: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"en,de"`` or ``["en", "de"]`` -> ``("en", "de")``; None or ``"all"`` -> None (every language)."""
    if lang is None:
        return None
    codes = lang.split(",") if isinstance(lang, str) else [c for part in lang for c in str(part).split(",")]
    codes = [c.strip() for c in codes if c.strip()]
    return None if codes in ([], ["all"]) else tuple(codes)


def load_trees(
    sources: Iterable[Source], lang: str | Sequence[str] | None = ("en",), on_error: OnError = "raise"
) -> tuple[list[Tree], Report]:
    """The usable trees of ``sources`` in the languages ``lang`` (None: all), with the read's account."""
    trees, report = read_trees(sources, on_error)
    return select_trees(trees, report, normalize_lang(lang)), report


@contextmanager
def _no_gc():
    # Reading keeps millions of small containers alive; the cyclic GC would rescan them again and again
    # (quadratic in practice) although none of them can form a cycle.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Builder:
    def __init__(self, policy: ErrorPolicy):
        self.policy = policy
        self.report = policy.report
        self.names: list[str] = []
        self.flat: list[dict[str, Any]] = []  # flat messages in input order
        self.flat_locs: list[tuple[int, int]] = []  # (source index, line) of each
        self.flat_by_id: dict[str, dict[str, Any]] = {}
        self.nested_ids: dict[str, str] = {}  # id -> where its tree was read
        self.skipped_ids: set[str] = set()  # ids of messages skipped as bad records
        self.trees: list[Tree] = []

    def where(self, source_index: int, line: int) -> str:
        return f"{self.names[source_index]}:{line}"

    def add(self, source: Source) -> None:
        name = source_name(source)
        self.names.append(name)
        index = len(self.names) - 1
        report, policy = self.report, self.policy
        flat, flat_locs, flat_by_id, nested_ids = self.flat, self.flat_locs, self.flat_by_id, self.nested_ids
        n_flat, n_nested, read = 0, 0, 0
        for line, rec in iter_records(source, policy):
            if type(rec) is dict and "message_id" in rec:
                read += 1
                problem = check_message(rec)
                if problem is None:
                    mid = rec["message_id"]
                    if mid in flat_by_id or mid in nested_ids:
                        problem = "duplicate_id", f"duplicate message id {mid} (first read at {self._first_seen(mid)})"
                    else:
                        rec["replies"] = []
                        flat_by_id[mid] = rec
                        flat.append(rec)
                        flat_locs.append((index, line))
                        n_flat += 1
                        continue
                self._bad(DataError(f"{name}:{line}", problem[1], problem[0]), rec.get("message_id"))
            elif type(rec) is dict and ("prompt" in rec or "message_tree_id" in rec):
                read += self._add_nested(rec, f"{name}:{line}")
                n_nested += 1
            else:
                read += 1
                what = "a JSON object" if type(rec) is dict else type(rec).__name__
                problem = "missing field 'message_id'" if type(rec) is dict else "expected a JSON object"
                self._bad(DataError(f"{name}:{line}", f"{problem}: neither a message nor a message tree ({what})", "missing_field" if type(rec) is dict else "wrong_type"), None)
        report.read += read
        forms = [f"{n_flat} flat messages" if n_flat else "", f"{n_nested} nested trees" if n_nested else ""]
        report.forms[name] = ", ".join(f for f in forms if f) or "nothing readable"

    def _bad(self, error: DataError, message_id: Any, n_messages: int = 1) -> None:
        # reported through the read count of the caller; the policy raises or counts it as skipped
        self.policy(error, n_messages)
        if isinstance(message_id, str):
            self.skipped_ids.add(message_id)

    def _first_seen(self, mid: str) -> str:
        if mid in self.nested_ids:
            return self.nested_ids[mid]
        first = self.flat_by_id[mid]
        i = next(i for i, m in enumerate(self.flat) if m is first)  # error path only
        return self.where(*self.flat_locs[i])

    def _add_nested(self, rec: dict[str, Any], where: str) -> int:
        """Check and keep one nested tree; returns how many messages it holds."""
        nodes, problem = _nested_nodes(rec)
        if problem is None:
            seen: set[str] = set()
            for node in nodes:
                mid = node["message_id"]
                if mid in seen or mid in self.flat_by_id or mid in self.nested_ids:
                    first = where if mid in seen else self._first_seen(mid)
                    problem = "duplicate_id", f"duplicate message id {mid} (first read at {first})"
                    break
                seen.add(mid)
        if problem is not None:
            self.policy(DataError(where, problem[1], problem[0]), len(nodes) or 1)
            self.skipped_ids.update(n["message_id"] for n in nodes if isinstance(n.get("message_id"), str))
            return len(nodes) or 1
        for node in nodes:
            self.nested_ids[node["message_id"]] = where
        self.trees.append(
            Tree(
                id=rec["message_tree_id"],
                state=rec.get("tree_state"),
                prompt=rec["prompt"],
                size=len(nodes),
                source=where.rsplit(":", 1)[0],
                origin=rec.get("origin"),
            )
        )
        return len(nodes)

    def finish(self) -> list[Tree]:
        """Link the flat messages into trees; skip and count orphaned subtrees and parent cycles."""
        by_id = self.flat_by_id
        roots, loose = [], []
        for m, (source_index, _) in zip(self.flat, self.flat_locs):
            parent_id = m.get("parent_id")
            if parent_id is None:
                roots.append((m, source_index))
            else:
                parent = by_id.get(parent_id)
                if parent is None:
                    loose.append(m)
                else:
                    parent["replies"].append(m)
        reached = 0
        for root, source_index in roots:
            size = _subtree_size(root)
            reached += size
            tree_id = root.get("message_tree_id") or root["message_id"]
            self.trees.append(Tree(tree_id, root.get("tree_state"), root, size, self.names[source_index]))
        for m in loose:
            size = _subtree_size(m)
            reached += size
            self.report.skip("parent_skipped" if m["parent_id"] in self.skipped_ids else "orphaned", size)
        if reached < len(self.flat):
            self._cycles([m for m, _ in roots] + loose, len(self.flat) - reached)
        return self.trees

    def _cycles(self, tops: list[dict[str, Any]], n_left: int) -> None:
        """Messages never reached from a root or an orphan lie on a parent cycle, or under one."""
        seen = {id(m) for top in tops for m in _walk(top)}
        left = [(m, loc) for m, loc in zip(self.flat, self.flat_locs) if id(m) not in seen]
        chain, mid = [], left[0][0]["message_id"]
        while mid not in chain:  # walk up until a message repeats: from there on it is the cycle
            chain.append(mid)
            mid = self.flat_by_id[mid]["parent_id"]
        cycle = chain[chain.index(mid):] + [mid]
        on_cycle = set(cycle)
        loc = next(loc for m, loc in left if m["message_id"] in on_cycle)
        problem = f"parent cycle: {' -> '.join(cycle)} (each message's parent_id is the next)"
        self.policy(DataError(self.where(*loc), problem, "parent_cycle"), n_left)


def _walk(m: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack = [m]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node["replies"])


def _subtree_size(m: dict[str, Any]) -> int:
    n, stack = 0, [m]
    pop, extend = stack.pop, stack.extend
    while stack:
        n += 1
        extend(pop()["replies"])
    return n


def _nested_nodes(rec: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """Every node of a nested tree record, and the first problem found, if any.

    On a problem, the nodes found so far are still returned so that the skip count is honest.
    """
    tree_id = rec.get("message_tree_id")
    if tree_id is None:
        return [], ("missing_field", "missing field 'message_tree_id'")
    if type(tree_id) is not str:
        return [], ("wrong_type", f"field 'message_tree_id' should be a string, got {type(tree_id).__name__}")
    state = rec.get("tree_state")
    if state is not None and type(state) is not str:
        return [], ("wrong_type", f"tree {tree_id}: field 'tree_state' should be a string, got {type(state).__name__}")
    prompt = rec.get("prompt")
    if type(prompt) is not dict:
        what = "missing field 'prompt'" if prompt is None else f"field 'prompt' should be an object, got {type(prompt).__name__}"
        return [], ("missing_field" if prompt is None else "wrong_type", f"tree {tree_id}: {what}")
    nodes: list[dict[str, Any]] = []
    first_problem = None
    stack = [prompt]
    while stack:
        node = stack.pop()
        if type(node) is not dict:
            first_problem = first_problem or ("wrong_type", f"tree {tree_id}: a reply should be an object, got {type(node).__name__}")
            continue
        nodes.append(node)
        replies = node.get("replies")
        if replies is None:
            node["replies"] = replies = []
        elif type(replies) is not list:
            first_problem = first_problem or ("wrong_type", f"tree {tree_id}: field 'replies' should be a list, got {type(replies).__name__}")
            continue
        problem = check_message(node)
        if problem is not None:
            first_problem = first_problem or (problem[0], f"tree {tree_id}: {problem[1]}")
        stack.extend(reversed(replies))
    return nodes, first_problem
