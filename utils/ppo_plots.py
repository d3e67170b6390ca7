"""Pictures of a PPO run: the per-update logs as curves, and sampled replies early against late."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

# (title, log keys drawn on it): one panel per question a reader asks of a PPO run.
PANELS = [
    ("reward-model score (mean ± std)", ["reward_mean"]),
    ("KL(π ‖ π_ref) per reply, nats", ["kl"]),
    ("KL coefficient β", ["kl_coef"]),
    ("entropy per token, nats", ["entropy"]),
    ("clip fraction / approx. KL(π_old ‖ π)", ["clip_fraction", "approx_kl"]),
    ("value loss", ["value_loss"]),
    ("explained variance", ["explained_variance"]),
    ("reply length, tokens", ["response_length"]),
    ("replies that ended (not cut off)", ["ended_fraction"]),
]


def plot_history(history: Sequence[dict[str, float]], path: str | Path | None = None):
    """A grid of the logged statistics against the update number; saved as PNG when ``path`` is given."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    updates = [row["update"] for row in history]
    fig, axes = plt.subplots(3, 3, figsize=(13, 9), constrained_layout=True)
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            ax.plot(updates, [row[key] for row in history], marker="o", markersize=3, label=key)
        if keys == ["reward_mean"]:
            mean = [row["reward_mean"] for row in history]
            std = [row["reward_std"] for row in history]
            ax.fill_between(updates, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("update")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)  # absolute values, not offsets from a constant
        ax.grid(alpha=0.3)
    fig.suptitle("PPO, one point per update")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def samples_table(samples: Sequence[dict[str, Any]], updates: Sequence[int], width: int = 200):
    """A DataFrame of the rollout samples logged at the given updates (e.g. the first and the last)."""
    import pandas as pd

    def cut(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    rows = [
        {"update": s["update"], "prompt": cut(s["prompt"]), "reply": cut(s["reply"]), "reward": round(s["reward"], 3)}
        for s in samples
        if s["update"] in set(updates)
    ]
    return pd.DataFrame(rows)
