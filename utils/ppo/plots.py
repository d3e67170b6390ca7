"""Pictures of a PPO run: the per-update logs as curves, and sampled replies early against late."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

# (title, log keys drawn on it): one panel per question a reader asks of a PPO run.
PANELS = [
    ("training batch's score (new prompts each update)", ["reward_mean"]),
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
    fig.suptitle("PPO training logs, one point per update (progress is read on the fixed set, plot_progress)")
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


def plot_progress(points: Sequence[dict[str, Any]], path: str | Path | None = None, title: str = "Progress on the fixed held-out prompts"):
    """The fixed set's reading at each snapshot: proxy and judge gain over update 0 (± 2 standard errors over
    prompts) and the KL to SFT, against the update; saved as PNG when ``path`` is given."""
    import matplotlib.pyplot as plt

    updates = [p["update"] for p in points]
    fig, (gain_ax, kl_ax) = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for name, style in (("proxy", "o-"), ("judge", "s--")):
        if points and points[0].get(f"{name}_gain") is not None:
            gain = [p[f"{name}_gain"] for p in points]
            se = [p[f"{name}_gain_se"] if p[f"{name}_gain_se"] == p[f"{name}_gain_se"] else 0.0 for p in points]  # NaN at update 0
            gain_ax.errorbar(updates, gain, yerr=[2 * s for s in se], fmt=style, capsize=3, label=name)
    gain_ax.axhline(0, color="grey", lw=0.6)
    gain_ax.set(xlabel="update", ylabel="reward − reward at update 0", title="gain, paired by prompt (± 2 s.e.)")
    gain_ax.legend(fontsize=8)
    kl_ax.errorbar(updates, [p["kl"] for p in points], yerr=[2 * p["kl_se"] for p in points], fmt="o-", capsize=3)
    kl_ax.set(xlabel="update", ylabel="nats per reply", title="KL(π ‖ π_SFT) on the fixed prompts")
    for ax in (gain_ax, kl_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
