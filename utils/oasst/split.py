"""Train / eval / held-out trees: the split is made per tree, so no conversation leaks across splits.

A tree goes to eval when its hash (of the seed and the tree id) is among the lowest ``eval_fraction``
of all trees' hashes: deterministic, the same for any input order, and independent of Python's hash
randomisation. Trees read from ``heldout_paths`` are never in train or eval, even when a train file
holds them too (the sample files share 6 trees).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence

from .records import OnError, Report, Source
from .trees import Tree, normalize_lang, read_trees, select_trees


@dataclass
class Split:
    train: list[Tree]
    eval: list[Tree]
    heldout: list[Tree]
    report: Report  # the account of train_paths (trees left out as held out are counted as "heldout")
    heldout_report: Report = field(default_factory=Report)

    def summary(self) -> dict[str, int]:
        return {
            "train_trees": len(self.train),
            "eval_trees": len(self.eval),
            "heldout_trees": len(self.heldout),
            "train_messages": sum(t.size for t in self.train),
            "eval_messages": sum(t.size for t in self.eval),
            "heldout_messages": sum(t.size for t in self.heldout),
        }


def split_key(tree_id: str, seed: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{tree_id}".encode(), digest_size=8).digest()


def eval_ids(tree_ids: Sequence[str], eval_fraction: float, seed: int) -> set[str]:
    """The ids of the trees that go to eval: ``round(n * eval_fraction)`` of them, at least one when
    the fraction is positive and there are two trees or more, and never all of them."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(tree_ids)
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    ranked = sorted(tree_ids, key=lambda t: (split_key(t, seed), t))
    return set(ranked[:n_eval])


def load_split(
    train_paths: Sequence[Source],
    heldout_paths: Sequence[Source] = (),
    lang: str | Sequence[str] | None = ("en",),
    eval_fraction: float = 0.1,
    seed: int = 0,
    on_error: OnError = "raise",
) -> Split:
    """Usable trees of ``train_paths`` split into train / eval by tree, and those of ``heldout_paths``."""
    if isinstance(train_paths, (str, bytes)) or isinstance(heldout_paths, (str, bytes)):
        raise TypeError("train_paths and heldout_paths are lists of paths")
    langs = normalize_lang(lang)
    heldout: list[Tree] = []
    heldout_report = Report()
    held_ids: set[str] = set()
    if heldout_paths:
        all_heldout, heldout_report = read_trees(heldout_paths, on_error)
        held_ids = {t.id for t in all_heldout}  # usable or not: a tree in a held-out file is never trained on
        heldout = select_trees(all_heldout, heldout_report, langs)
    trees, report = read_trees(train_paths, on_error)
    kept = []
    for tree in trees:
        if tree.id in held_ids:
            report.drop_kept("heldout", tree.size)
        else:
            kept.append(tree)
    kept = select_trees(kept, report, langs)
    to_eval = eval_ids([t.id for t in kept], eval_fraction, seed)
    return Split(
        train=[t for t in kept if t.id not in to_eval],
        eval=[t for t in kept if t.id in to_eval],
        heldout=heldout,
        report=report,
        heldout_report=heldout_report,
    )
