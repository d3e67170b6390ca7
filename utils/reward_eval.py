"""How good is a reward model? Pairwise accuracy on preferences it never saw, beside the length baseline.

A reward model is right on a pair when it scores the chosen reply above the rejected one; a tie counts
half (a coin flip). The yardstick is the **length baseline**, "the longer reply wins", scored the same
way on the same pairs: on OASST, labellers prefer the longer reply about two times in three (0.70 on the
100-tree file's pairs, 0.66 on the flat file's), so a reward model has to beat that to show it learned
more than length. On HH-RLHF harmless pairs the longer reply mostly loses (0.44): there, a model that
only learned "longer is better" falls below chance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F


class Scorer(Protocol):
    def score(self, conversations: Sequence[Sequence[dict[str, str]]], batch_size: int = 16) -> list[float]: ...


def pair_conversations(pair) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The chosen and the rejected conversation of a preference pair (``.prompt``, ``.chosen``, ``.rejected``)."""
    prompt = list(pair.prompt)
    return prompt + [{"role": "assistant", "content": pair.chosen}], prompt + [{"role": "assistant", "content": pair.rejected}]


def pairwise_loss(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Mean ``-log σ(r_chosen − r_rejected)``, the loss the reward model is trained on."""
    diff = torch.tensor(chosen, dtype=torch.float64) - torch.tensor(rejected, dtype=torch.float64)
    return float(-F.logsigmoid(diff).mean())


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Share of pairs where chosen scores above rejected; a tie counts half."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen scores but {len(rejected)} rejected ones")
    if not chosen:
        return math.nan
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)) / len(chosen)


def length_baseline_accuracy(pairs: Sequence) -> float:
    """Accuracy of "the longer reply wins" (length in characters), ties counting half."""
    return pairwise_accuracy([len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs])


def correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when either side is constant or there are fewer than two points."""
    if len(x) < 2:
        return math.nan
    t = torch.tensor([list(x), list(y)], dtype=torch.float64)
    t = t - t.mean(dim=1, keepdim=True)
    denom = t[0].norm() * t[1].norm()
    return float((t[0] @ t[1]) / denom) if denom > 0 else math.nan


@dataclass
class PairResult:
    """A reward model's scores on preference pairs, and what they add up to."""

    n: int
    accuracy: float
    length_baseline: float
    loss: float
    reward_length_corr: float  # Pearson's r of reward and reply length (characters), each reply once
    chosen_scores: list[float] = field(repr=False, default_factory=list)
    rejected_scores: list[float] = field(repr=False, default_factory=list)
    replies: list[tuple[str, float]] = field(repr=False, default_factory=list)  # (reply, reward), each reply once


def evaluate_pairs(scorer: Scorer, pairs: Sequence, batch_size: int = 16) -> PairResult:
    """Score both replies of every pair (``.prompt``, ``.chosen``, ``.rejected``) and compare."""
    convs = [conv for p in pairs for conv in pair_conversations(p)]
    scores = scorer.score(convs, batch_size=batch_size)
    chosen, rejected = scores[0::2], scores[1::2]
    # A reply ranked against k others appears in k pairs: count it once.
    replies = list({json.dumps(c, sort_keys=True): (c[-1]["content"], s) for c, s in zip(convs, scores)}.values())
    return PairResult(
        n=len(pairs),
        accuracy=pairwise_accuracy(chosen, rejected),
        length_baseline=length_baseline_accuracy(pairs),
        loss=pairwise_loss(chosen, rejected) if pairs else math.nan,
        reward_length_corr=correlation([len(text) for text, _ in replies], [s for _, s in replies]),
        chosen_scores=chosen,
        rejected_scores=rejected,
        replies=replies,
    )


def read_pairs_file(
    path: str | Path, lang: str | Sequence[str] | None = ("en",), on_error: str = "raise", report=None
) -> list:
    """Preference pairs from HH-RLHF pairs or an OASST export (every ranked pair of its usable trees).

    ``on_error="skip"`` skips bad records and counts them in ``report`` (a ``utils.oasst.Report``, filled
    when given: pairs for HH-RLHF, messages for an OASST export).
    """
    from utils import oasst

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    report = report if report is not None else oasst.Report()
    if oasst.is_hh_file(path):
        return oasst.read_hh_pairs(path, on_error=on_error, report=report)
    trees, tree_report = oasst.load_trees([path], lang=lang, on_error=on_error)
    for key in ("read", "kept"):
        setattr(report, key, getattr(report, key) + getattr(tree_report, key))
    report.skipped.update(tree_report.skipped)
    report.forms.update(tree_report.forms)
    pairs = oasst.preference_pairs(oasst.rm_groups(trees))
    if not pairs:
        skipped = ", ".join(f"{n} {reason}" for reason, n in tree_report.skipped.items()) or "none"
        raise ValueError(
            f"{path}: no preference pairs: {len(trees)} usable trees hold no prompt with two ranked replies "
            f"({tree_report.read} messages read; skipped: {skipped})"
        )
    return pairs


def plot_score_histograms(results: dict[str, PairResult], path: str | Path, bins: int = 30):
    """One panel per pair set: the distribution of chosen vs rejected rewards. Saves a PNG, returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        lo = min(r.chosen_scores + r.rejected_scores)
        hi = max(r.chosen_scores + r.rejected_scores)
        edges = torch.linspace(lo, hi + 1e-9, bins + 1).tolist()
        ax.hist(r.chosen_scores, bins=edges, alpha=0.6, label="chosen", color="tab:green")
        ax.hist(r.rejected_scores, bins=edges, alpha=0.6, label="rejected", color="tab:red")
        ax.set_title(f"{name}: accuracy {r.accuracy:.2f} (n={r.n})")
        ax.set_xlabel("reward")
        ax.legend()
    axes[0][0].set_ylabel("replies")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig
