"""What notebook 02 shows: the loss curves, and replies before and after SFT beside the human reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from utils.model import chat_format


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: str | Path | None = None, title: str = "SFT loss (assistant tokens)"):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, style in (("train", "-"), ("eval", "o--")):
        if curves.get(name):
            steps, losses = zip(*curves[name])
            ax.plot(steps, losses, style, label=f"{name} (held-out)" if name == "eval" else name)
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats/token)", title=title)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def generations_table(prompts: Sequence[Sequence[dict]], columns: dict[str, Sequence[str]], width: int = 300):
    """A DataFrame: the last user turn of each prompt, then one column per model, texts cut to ``width``."""
    import pandas as pd

    def cut(s: str) -> str:
        return s if len(s) <= width else s[: width - 1] + "…"

    rows = {"prompt": [cut(chat_format.normalize(p)[-1]["content"]) for p in prompts]}
    rows.update({name: [cut(t) for t in texts] for name, texts in columns.items()})
    return pd.DataFrame(rows)


def save_generations(path: str | Path, prompts: Sequence[Sequence[dict]], columns: dict[str, Sequence[str]]) -> Path:
    """The full (uncut) generations as JSON lines: one prompt and every column's text a line."""
    with open(path, "w") as f:
        for i, prompt in enumerate(prompts):
            f.write(json.dumps({"prompt": list(prompt), **{k: v[i] for k, v in columns.items()}}) + "\n")
    return Path(path)
