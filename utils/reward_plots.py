"""Pictures of stage 03: training curves of the reward models, and reward against reply length."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

COIN_FLIP_LOSS = 0.6931  # log 2: the pairwise loss of a model that cannot tell the replies apart


def plot_training(log_histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path | None = None):
    """Training loss and batch accuracy against epoch, one line per reward model (from the trainers' logs)."""
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.2))
    for name, history in log_histories.items():
        rows = [h for h in history if "loss" in h and "accuracy" in h]
        loss_ax.plot([h["epoch"] for h in rows], [h["loss"] for h in rows], marker="o", ms=3, label=name)
        acc_ax.plot([h["epoch"] for h in rows], [h["accuracy"] for h in rows], marker="o", ms=3, label=name)
    loss_ax.axhline(COIN_FLIP_LOSS, color="grey", ls="--", lw=1, label="log 2 (a coin flip)")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="−log σ(r_w − r_l)")
    acc_ax.axhline(0.5, color="grey", ls="--", lw=1)
    acc_ax.set(xlabel="epoch", ylabel="accuracy on the batch", title="training pairs ranked right")
    loss_ax.legend(fontsize=8)
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def plot_reward_vs_length(replies: Sequence[tuple[str, float]], correlation: float, path: str | Path | None = None):
    """Each held-out reply's reward against its length in characters (log scale), Pearson's r in the title."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.scatter([len(text) for text, _ in replies], [reward for _, reward in replies], s=8, alpha=0.5)
    ax.set(xscale="log", xlabel="reply length (characters, log scale)", ylabel="reward",
           title=f"held-out OASST replies: Pearson r = {correlation:.2f}")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
