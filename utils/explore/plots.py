"""The plots of notebook 01_explore_trees."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from utils.explore.counts import TreeShapes


def save_figure(fig, out_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``out_dir/name.png`` (the run report shows every PNG of a stage)."""
    path = Path(out_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_overview(languages: dict[str, dict[str, int]], flags: dict[str, int]):
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
    names = list(languages)[:15]
    ax1.bar(names, [languages[k]["messages"] for k in names], color="tab:blue")
    ax1.set_title("messages per language")
    ax1.set_ylabel("messages")
    keys = ["prompter", "assistant", "deleted", "synthetic", "review_result_false", "review_result_null", "ranked"]
    ax2.barh(keys[::-1], [flags[k] for k in keys[::-1]], color="tab:gray")
    ax2.set_title(f"roles and flags ({flags['messages']:,} messages)")
    for i, k in enumerate(keys[::-1]):
        ax2.text(flags[k], i, f" {flags[k]:,}", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def plot_tree_shapes(shapes: TreeShapes):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, values, title in (
        (axes[0], shapes.sizes, "messages per tree"),
        (axes[1], shapes.depths, "depth (longest thread, messages)"),
    ):
        ax.hist(values, bins=range(1, max(values, default=1) + 2), color="tab:blue", align="left")
        ax.set_title(title)
        ax.set_ylabel("trees")
    top = max(shapes.replies_per_prompter + shapes.replies_per_assistant, default=1)
    axes[2].hist(
        [shapes.replies_per_prompter, shapes.replies_per_assistant],
        bins=range(1, top + 2),
        label=["prompter message", "assistant message"],
        align="left",
    )
    axes[2].set_title("replies per message with replies")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ranks(ranks: dict[str, Counter]):
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, title, color in (
        (ax1, "rank", "rank of ranked replies (0 = best)", "tab:green"),
        (ax2, "group_size", "ranked replies per ranked message", "tab:olive"),
    ):
        items = sorted(ranks[key].items())
        ax.bar([str(k) for k, _ in items], [v for _, v in items], color=color)
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_label_means(means: dict[str, dict[str, float]]):
    import matplotlib.pyplot as plt

    names = list(means)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1))
    ax.barh(names, [means[k].get("mean_prompter", float("nan")) for k in names], height=0.4, align="edge", label="prompter")
    ax.barh(names, [means[k].get("mean_assistant", float("nan")) for k in names], height=-0.4, align="edge", label="assistant")
    ax.set_xlim(0, 1)
    ax.set_title("mean crowd label value (0..1)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_emojis(counts: Counter, top: int = 12):
    import matplotlib.pyplot as plt

    items = counts.most_common(top)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar([k for k, _ in items], [v for _, v in items], color="tab:orange")
    ax.set_title("emoji reactions (names starting with _ are skipped tasks)")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def plot_length_by_rank(lengths: dict[int, list[int]], longer_rate: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    positions = [p for p in lengths if len(lengths[p]) >= 3]
    ax.boxplot([lengths[p] for p in positions], positions=positions, showfliers=False)
    ax.plot(positions, [statistics.fmean(lengths[p]) for p in positions], "o-", color="tab:red", label="mean")
    ax.set_xlabel("place in its ranking group (0 = ranked best)")
    ax.set_ylabel("words")
    ax.set_title(f"reply length by rank: the better reply is longer in {longer_rate:.0%} of pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
