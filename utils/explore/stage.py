"""Stage 01 in one step: :func:`explore` reads the export and computes every figure the notebook shows (seconds, on
the shipped files), and :func:`stage_metrics` is the one writer of its metrics.json."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from utils.explore.params import ExploreParams


@dataclass
class Exploration:
    """The export as it was read, and every figure of notebook 01, section by section."""

    trees: list  # every tree of train_paths, whatever its language
    report: Any  # utils.oasst.Report: messages read, kept and skipped, with the reasons
    languages: dict[str, dict[str, int]]
    flags: dict[str, int]
    shapes: Any  # utils.explore.counts.TreeShapes
    ranks: dict[str, Counter]
    means: dict[str, dict[str, float]]  # crowd labels' means
    emojis: Counter
    split: Any  # the train / eval / held-out split every later stage makes
    views: dict[str, dict[str, int]]  # per part of the split: trees, messages, and the SFT / RM / RL views' sizes
    sft_variants: dict[str, dict[str, int]]
    synthetic_share: dict[str, float]
    lengths: dict[int, list[int]]  # words per reply, by its place in the ranking
    longer_rate: float  # how often the better-ranked reply of a pair is the longer one
    example: Any  # the tree rendered at the end


def explore(params: ExploreParams) -> Exploration:
    from utils.explore import counts
    from utils.oasst import compare_sft_variants, count_views, preference_pairs, read_trees, rm_groups
    from utils.params import ParameterError

    trees, report = read_trees(params.train_paths, on_error=params.on_error)
    split = params.load_split()
    views = {name: {"trees": len(part), "messages": sum(t.size for t in part), **vars(count_views(part))}
             for name, part in (("train", split.train), ("eval", split.eval), ("heldout", split.heldout))}
    synthetic_share = {name: round(f["synthetic"] / max(f["messages"], 1), 4)
                       for name, f in (("train files", counts.flag_counts(trees)), ("held-out files", counts.flag_counts(split.heldout)))}
    groups = rm_groups(split.train)
    if params.example_tree_id is None:
        example = counts.pick_example_tree(split.train)
    else:
        example = next((t for t in trees if t.id == params.example_tree_id), None)
        if example is None:
            raise ParameterError(f"01_explore_trees: example_tree_id {params.example_tree_id!r} is no tree of "
                                 f"{', '.join(params.train_paths)}")
    return Exploration(
        trees, report, counts.per_language(trees), counts.flag_counts(trees), counts.tree_shapes(trees), counts.rank_counts(trees),
        counts.label_means(trees), counts.emoji_counts(trees), split, views, compare_sft_variants(split.train), synthetic_share,
        counts.length_by_position(groups), counts.longer_chosen_rate(preference_pairs(groups)), example)


def stage_metrics(ex: Exploration, started: float | None = None) -> dict[str, Any]:
    """What stage 01 records."""
    train_views = ex.views["train"]
    return {
        "trees": len(ex.trees),
        "messages": ex.report.read,
        "kept": ex.report.kept,
        "skipped": dict(ex.report.skipped),
        "languages": ex.languages,
        "flags": ex.flags,
        "synthetic_share": ex.synthetic_share,
        **ex.shapes.summary(),
        "rank_counts": {str(k): v for k, v in sorted(ex.ranks["rank"].items())},
        "label_means": {k: v["mean"] for k, v in ex.means.items()},
        "emojis": dict(ex.emojis.most_common(10)),
        "splits": ex.views,
        "sft_threads": train_views["sft_threads"],
        "rm_groups": train_views["rm_groups"],
        "rm_pairs": train_views["rm_pairs"],
        "rl_prompts": train_views["rl_prompts"],
        "sft_variants": ex.sft_variants,
        "longer_chosen_rate": round(ex.longer_rate, 4),
        "example_tree_id": ex.example.id,
        **({"seconds": round(time.time() - started, 1)} if started is not None else {}),
    }
