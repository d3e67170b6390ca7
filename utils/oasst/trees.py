"""Conversation trees from flat messages (any order) or nested export trees, and which trees are usable.

A tree's messages stay the dicts that were read, every field kept, each with a ``replies`` list added
(flat input) or kept (nested input): both forms end up shaped like OpenAssistant's nested export.
Children keep the order in which they appear in the input, which matters: the SFT view takes a
prompter leaf only when it is its parent's *first* reply, as the reference pipeline does.

Building is linear: one dict from id to message, one pass linking children, one walk from the roots.
"""

from __future__ import annotations

import bisect
import gc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from .records import DataError, ErrorPolicy, OnError, Report, Source, check_message, iter_records, source_name

READY = "ready_for_export"
# What tree selection and the views look at besides the text: enough for counting (``stats``).
STRUCTURE_FIELDS = (
    "message_id", "parent_id", "role", "lang", "deleted", "synthetic", "review_result", "rank",
    "tree_state", "message_tree_id",
)  # fmt: skip


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


def read_trees(
    sources: Iterable[Source], on_error: OnError = "raise", fields: Sequence[str] | None = None
) -> tuple[list[Tree], Report]:
    """All trees of ``sources`` (flat and nested forms may be mixed) and the account of what was read.

    Messages whose parent is not in the input (every single-language subset has some) are skipped with
    their subtrees and counted as ``orphaned``; that is never an error. ``fields``: keep only these
    fields of each message (e.g. :data:`STRUCTURE_FIELDS`, for counting) instead of every field; a
    message then holds a fraction of the memory.
    """
    report = Report()
    builder = _Builder(ErrorPolicy(on_error, report), fields)
    with no_gc():
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
    sources: Iterable[Source],
    lang: str | Sequence[str] | None = ("en",),
    on_error: OnError = "raise",
    fields: Sequence[str] | None = None,
) -> tuple[list[Tree], Report]:
    """The usable trees of ``sources`` in the languages ``lang`` (None: all), with the read's account."""
    trees, report = read_trees(sources, on_error, fields)
    return select_trees(trees, report, normalize_lang(lang)), report


@contextmanager
def no_gc():
    """Keep the cyclic GC off inside: reading allocates millions of containers that stay alive and
    cannot form cycles, and collections triggered meanwhile would scan them all, again and again.
    Nests: only the outermost block turns the GC back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Builder:
    def __init__(self, policy: ErrorPolicy, fields: Sequence[str] | None):
        self.policy = policy
        self.fields = tuple(fields) if fields is not None else None
        self.report = policy.report
        self.names: list[str] = []
        self.flat: list[dict[str, Any]] = []  # flat messages in input order
        self.flat_lines: list[int] = []  # the line (or row) of each
        self.flat_starts: list[int] = []  # where each source's flat messages start in self.flat
        self.flat_by_id: dict[str, dict[str, Any]] = {}
        self.nested_ids: dict[str, str] = {}  # id -> where its tree was read
        self.skipped_ids: set[str] = set()  # ids of messages skipped as bad records
        self.trees: list[Tree] = []

    def flat_source(self, i: int) -> int:
        """Index of the source that flat message ``i`` came from."""
        return bisect.bisect_right(self.flat_starts, i) - 1

    def flat_where(self, i: int) -> str:
        return f"{self.names[self.flat_source(i)]}:{self.flat_lines[i]}"

    def add(self, source: Source) -> None:
        name = source_name(source)
        self.names.append(name)
        self.flat_starts.append(len(self.flat))
        report = self.report
        flat, flat_lines, flat_by_id, nested_ids = self.flat, self.flat_lines, self.flat_by_id, self.nested_ids
        fields = self.fields
        n_flat, n_nested, read = 0, 0, 0
        for line, rec in iter_records(source, self.policy):
            if type(rec) is dict and "message_id" in rec:
                read += 1
                problem = check_message(rec)
                if problem is None:
                    mid = rec["message_id"]
                    if not (mid in flat_by_id or (nested_ids and mid in nested_ids)):
                        if fields is not None:
                            rec = {k: rec.get(k) for k in fields}
                        rec["replies"] = []
                        flat_by_id[mid] = rec
                        flat.append(rec)
                        flat_lines.append(line)
                        n_flat += 1
                        continue
                    problem = "duplicate_id", f"duplicate message id {mid} (first read at {self._first_seen(mid)})"
                self._bad(DataError(f"{name}:{line}", problem[1], problem[0]), rec.get("message_id"))
            elif type(rec) is dict and ("prompt" in rec or "message_tree_id" in rec):
                read += self._add_nested(rec, f"{name}:{line}")
                n_nested += 1
            else:
                read += 1
                if type(rec) is dict:
                    problem = "missing_field", "missing field 'message_id' (neither a message nor a message tree)"
                else:
                    problem = "wrong_type", f"expected a JSON object (a message or a message tree), got {type(rec).__name__}"
                self._bad(DataError(f"{name}:{line}", problem[1], problem[0]), None)
        report.read += read
        forms = [f"{n_flat} flat messages" if n_flat else "", f"{n_nested} nested trees" if n_nested else ""]
        report.forms[name] = ", ".join(f for f in forms if f) or "nothing readable"

    def _bad(self, error: DataError, message_id: Any) -> None:
        """One bad flat record: raise, or count it and remember its id (its replies are then
        counted as ``parent_skipped`` rather than ``orphaned``)."""
        self.policy(error)
        if isinstance(message_id, str):
            self.skipped_ids.add(message_id)

    def _first_seen(self, mid: str) -> str:
        if mid in self.nested_ids:
            return self.nested_ids[mid]
        first = self.flat_by_id[mid]
        return self.flat_where(next(i for i, m in enumerate(self.flat) if m is first))  # error path only

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
                prompt=rec["prompt"] if self.fields is None else _project(rec["prompt"], self.fields),
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
        for i, m in enumerate(self.flat):
            parent_id = m.get("parent_id")
            if parent_id is None:
                roots.append((m, i))
            else:
                parent = by_id.get(parent_id)
                if parent is None:
                    loose.append(m)
                else:
                    parent["replies"].append(m)
        reached = 0
        for root, i in roots:
            size = _subtree_size(root)
            reached += size
            tree_id = root.get("message_tree_id") or root["message_id"]
            self.trees.append(Tree(tree_id, root.get("tree_state"), root, size, self.names[self.flat_source(i)]))
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
        left = [(m, i) for i, m in enumerate(self.flat) if id(m) not in seen]
        chain, mid = [], left[0][0]["message_id"]
        while mid not in chain:  # walk up until a message repeats: from there on it is the cycle
            chain.append(mid)
            mid = self.flat_by_id[mid]["parent_id"]
        cycle = chain[chain.index(mid):] + [mid]
        on_cycle = set(cycle)
        first = next(i for m, i in left if m["message_id"] in on_cycle)
        problem = f"parent cycle: {' -> '.join(cycle)} (each message's parent_id is the next)"
        self.policy(DataError(self.flat_where(first), problem, "parent_cycle"), n_left)


def _project(node: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    out = {k: node.get(k) for k in fields}
    out["replies"] = [_project(r, fields) for r in node["replies"]]
    return out


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
