"""DPO's held-out yardstick (module note 6 of :mod:`utils.dpo`): the implicit reward ``β log π(y|x)/π_ref(y|x)`` on
pairs no model trained on: accuracy, margin and loss, per held-out set."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from utils.dpo.data import EncodedPairs
from utils.dpo.policy import as_reference

if TYPE_CHECKING:
    from utils.dpo.training import DPOStats


@dataclass
class ImplicitRewards:
    """DPO's implicit rewards ``β log π(y|x)/π_ref(y|x)`` of the chosen and the rejected reply of each pair."""

    chosen: list[float]
    rejected: list[float]

    @property
    def n(self) -> int:
        return len(self.chosen)

    def window(self, start: int, stop: int) -> "ImplicitRewards":
        return ImplicitRewards(self.chosen[start:stop], self.rejected[start:stop])

    @property
    def accuracy(self) -> float:
        from utils.reward.evaluation import pairwise_accuracy

        return pairwise_accuracy(self.chosen, self.rejected)

    @property
    def margin(self) -> float:
        return float(sum(c - r for c, r in zip(self.chosen, self.rejected)) / self.n) if self.n else math.nan

    @property
    def loss(self) -> float:
        from utils.reward.evaluation import pairwise_loss

        return pairwise_loss(self.chosen, self.rejected) if self.n else math.nan

    def as_dict(self) -> dict[str, float]:
        return {"pairs": self.n, "accuracy": self.accuracy, "margin": self.margin, "loss": self.loss}


@torch.no_grad()
def reply_logprob_sums(model, encoded: EncodedPairs, pad_id: int, batch_size: int = 16, reference: bool = False) -> np.ndarray:
    """``log π(y|x)`` of each chosen reply, then of each rejected reply, summed over the reply tokens alone (as
    trl's loss sums them): under the policy (``"default"``), or with ``reference`` under π_ref (``"ref"``)."""
    from utils.evaluate.kl import masked_logprob_sums

    sequences = [p + c for p, c in zip(encoded.prompt_ids, encoded.chosen_ids)] + \
                [p + r for p, r in zip(encoded.prompt_ids, encoded.rejected_ids)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(encoded.prompt_ids, encoded.chosen_ids)] + \
            [[0] * len(p) + [1] * len(r) for p, r in zip(encoded.prompt_ids, encoded.rejected_ids)]
    was_training = model.training
    model.eval()
    try:
        if reference:
            with as_reference(model):
                return masked_logprob_sums(model, sequences, masks, pad_id, batch_size)
        return masked_logprob_sums(model, sequences, masks, pad_id, batch_size)
    finally:
        model.train(was_training)


def implicit_rewards(model, encoded: EncodedPairs, beta: float, pad_id: int, batch_size: int = 16,
                     reference: np.ndarray | None = None) -> ImplicitRewards:
    """The implicit rewards of ``encoded``'s pairs under the current policy and the reference.

    π_ref never trains, so its log-probs (:func:`reply_logprob_sums` with ``reference=True``) can be passed in
    once and reused before and after training, rather than recomputed.
    """
    policy = reply_logprob_sums(model, encoded, pad_id, batch_size)
    if reference is None:
        reference = reply_logprob_sums(model, encoded, pad_id, batch_size, reference=True)
    rewards = (beta * (policy - reference)).tolist()
    return ImplicitRewards(rewards[: len(encoded)], rewards[len(encoded) :])


def per_set(stats: DPOStats, sets: Mapping[str, Sequence]) -> dict[str, tuple[ImplicitRewards, ImplicitRewards, list]]:
    """``{set: (rewards before, rewards after, pairs)}`` for each held-out set (in the order they were concatenated
    for :func:`implicit_rewards`) and for ``"both"`` together."""
    out, start = {}, 0
    for name, pairs in sets.items():
        window = (start, start + len(pairs))
        out[name] = (stats.before.window(*window), stats.after.window(*window), list(pairs))
        start += len(pairs)
    out["both"] = (stats.before, stats.after, [p for ps in sets.values() for p in ps])
    return out


def heldout_table(stats: DPOStats, sets: Mapping[str, Sequence], reward_model: Mapping[str, Any] | None = None):
    """A DataFrame of the held-out figures per pair set, before and after training, beside the length baseline.

    ``reward_model`` is stage 03's metrics: its proxy's accuracy is shown beside when it was measured on as many
    pairs of the same two sets.
    """
    import pandas as pd

    from utils.reward.evaluation import length_baseline_accuracy

    rows = {name: {"pairs": len(pairs), "accuracy before": b.accuracy, "accuracy after": a.accuracy, "margin after": a.margin,
                   "loss after": a.loss, "length baseline": length_baseline_accuracy(pairs)}
            for name, (b, a, pairs) in per_set(stats, sets).items()}
    if reward_model is not None and reward_model.get("pairs_eval") == stats.after.n:
        rows["both"]["reward model (03)"] = reward_model.get("eval_accuracy")
    return pd.DataFrame(rows).T.astype({"pairs": int}).round(3)
