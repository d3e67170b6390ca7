"""What notebook 04_rloo shows: replies of SFT and RLOO side by side, and the per-update training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from utils.dpo.policy import as_reference

Conversation = list[dict[str, Any]]


def compare_replies(policy, tokenizer, prompts: Sequence[Conversation], reward_fn: Callable, max_new_tokens: int, seed: int = 0):
    """A DataFrame: each prompt answered by the SFT model (π_ref) and by the trained policy, with the same seeded
    sampling from π itself, and each reply's reward."""
    import pandas as pd

    from utils.model.generation import SamplingConfig, generate_replies

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, min_new_tokens=0, temperature=1.0, top_k=0, top_p=1.0)
    with as_reference(policy):
        sft = generate_replies(policy, tokenizer, prompts, sampling, seed=seed)
    rloo = generate_replies(policy, tokenizer, prompts, sampling, seed=seed)
    return pd.DataFrame({"prompt": [p[-1]["content"][:200] for p in prompts], "SFT": sft, "reward SFT": list(reward_fn(prompts, sft)),
                         "RLOO": rloo, "reward RLOO": list(reward_fn(prompts, rloo))}).round(3)


def plot_training(train_log: Sequence[Mapping[str, Any]], path: str | Path | None = None):
    """Per update: the reward (mean ± std over the replies), the KL to the SFT model, reply length and share ended."""
    import matplotlib.pyplot as plt

    updates = [row["update"] for row in train_log]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    mean = [row["reward_mean"] for row in train_log]
    std = [row["reward_std"] for row in train_log]
    axes[0].plot(updates, mean, "-o", ms=3)
    axes[0].fill_between(updates, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    axes[0].set(xlabel="update", title="reward of the sampled replies (mean ± std)")
    axes[1].plot(updates, [row["kl"] for row in train_log], "-o", ms=3)
    axes[1].set(xlabel="update", title="KL to the SFT model (nats per reply)")
    axes[2].plot(updates, [row["response_length"] for row in train_log], "-o", ms=3, label="tokens per reply")
    axes[2].set(xlabel="update", title="reply length")
    twin = axes[2].twinx()
    twin.plot(updates, [row["ended_fraction"] for row in train_log], "--", color="grey", label="share ended")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("share that ended with a stop token")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
