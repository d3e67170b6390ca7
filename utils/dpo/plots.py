"""DPO's training curve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence


def plot_training(log_history: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """trl's logged loss, reward accuracy and margin on the training batches, against the optimizer step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, key, label in zip(axes, ("loss", "rewards/accuracies", "rewards/margins"),
                              ("DPO loss", "reward accuracy (training batches)", "reward margin (training batches)")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if points:
            ax.plot(*zip(*points), "-")
        ax.set(xlabel="optimizer step", title=label)
    axes[0].axhline(math.log(2), color="grey", lw=0.8, ls=":")  # the loss where π = π_ref
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
