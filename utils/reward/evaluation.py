"""How good is a reward model? Pairwise accuracy on preferences it never saw, beside the length baseline.

A reward model is right on a pair when it scores the chosen reply above the rejected one; a tie counts
half (a coin flip). The yardstick is the **length baseline**, "the longer reply wins", scored the same
way on the same pairs: on OASST, labellers prefer the longer reply about two times in three (0.70 on the
100-tree file's pairs, 0.66 on the flat file's), so a reward model has to beat that to show it learned
more than length. On HH-RLHF harmless pairs the longer reply mostly loses (0.44): there, a model that
only learned "longer is better" falls below chance.

**Split by length** (:func:`length_split`, ``PairResult.by_length``). One accuracy mixes two kinds of pairs. On
pairs whose chosen reply is the longer one ("longer_preferred"), "the longer reply wins" is right every time; on
pairs whose chosen reply is the shorter one ("shorter_preferred") it is wrong every time, 0 by construction. A
reward model that learned only length therefore scores about 1 on the first kind and about 0 on the second, and
its overall accuracy merely repeats the share of longer-preferred pairs. Accuracy on the shorter-preferred pairs is
where length cannot help: anything above 0.5 there was learned from something other than length (and a model that
leans on length falls below 0.5 there). Pairs of equal length ("same_length") are counted apart. Each part comes
with its number of pairs and a 95% interval.

The interval is a **bootstrap over prompts**, not over pairs: a ranking of k replies to one prompt yields up to
k(k-1)/2 pairs that share the prompt and its replies, so they are not independent, and resampling pairs one by
one would give too narrow an interval. Pairs are grouped by their prompt (the conversation before the reply);
each round draws as many prompts as the part has, with replacement, and takes the accuracy over all their pairs
(ties counting half); the interval is the 2.5th and 97.5th percentile of 1000 seeded rounds, so it is the same
every time. With no pairs the accuracy is NaN and the interval None; with pairs from one prompt only the interval
is None too (nothing to say how prompts vary).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
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


LENGTH_SUBSETS = ("longer_preferred", "shorter_preferred", "same_length")
BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SEED = 0


def pair_prompt_key(pair) -> str:
    """What groups pairs for the bootstrap: the prompt (the conversation before the reply), as text."""
    return json.dumps(list(pair.prompt), sort_keys=True)


def length_subset(pair) -> str:
    """``"longer_preferred"``, ``"shorter_preferred"`` or ``"same_length"``: the chosen reply against the rejected
    one, in characters (as :func:`length_baseline_accuracy` measures them)."""
    c, r = len(pair.chosen), len(pair.rejected)
    return "longer_preferred" if c > r else "shorter_preferred" if c < r else "same_length"


def bootstrap_by_group(wins: Sequence[float], groups: Sequence[str], rounds: int = BOOTSTRAP_ROUNDS,
                       seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> list[float] | None:
    """A percentile interval for the mean of ``wins`` (1, 0.5 or 0 a pair), resampling whole groups with replacement.

    None with fewer than two groups: one group says nothing of how groups vary."""
    keys = list(dict.fromkeys(groups))
    if len(keys) < 2:
        return None
    index = {k: i for i, k in enumerate(keys)}
    where = np.array([index[g] for g in groups])
    win_sum = np.bincount(where, weights=np.asarray(wins, dtype=np.float64), minlength=len(keys))
    count = np.bincount(where, minlength=len(keys)).astype(np.float64)
    draws = np.random.default_rng(seed).integers(0, len(keys), size=(rounds, len(keys)))
    means = win_sum[draws].sum(axis=1) / count[draws].sum(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return [float(lo), float(hi)]


def length_split(pairs: Sequence, chosen: Sequence[float], rejected: Sequence[float], rounds: int = BOOTSTRAP_ROUNDS,
                 seed: int = BOOTSTRAP_SEED) -> dict[str, dict]:
    """Accuracy on the pairs whose chosen reply is longer, shorter, or as long as the rejected one.

    ``{"longer_preferred" | "shorter_preferred" | "same_length": {"n", "accuracy", "ci"}}``: ``n`` pairs, their
    accuracy (ties half; NaN when ``n`` is 0) and its 95% bootstrap interval over prompts (``[lo, hi]``; None when
    the pairs come from fewer than two prompts). See the module's docstring for why.
    """
    if not len(pairs) == len(chosen) == len(rejected):
        raise ValueError(f"{len(pairs)} pairs, {len(chosen)} chosen scores, {len(rejected)} rejected ones")
    parts: dict[str, tuple[list[float], list[str]]] = {name: ([], []) for name in LENGTH_SUBSETS}
    for pair, c, r in zip(pairs, chosen, rejected):
        wins, groups = parts[length_subset(pair)]
        wins.append(1.0 if c > r else 0.5 if c == r else 0.0)
        groups.append(pair_prompt_key(pair))
    return {name: {"n": len(wins), "accuracy": sum(wins) / len(wins) if wins else math.nan,
                   "ci": bootstrap_by_group(wins, groups, rounds, seed) if wins else None}
            for name, (wins, groups) in parts.items()}


def format_split(part: dict) -> str:
    """One part of :func:`length_split`, readable: ``0.812 [0.741, 0.879] (n=120)``, three significant digits."""
    if not part["n"]:
        return "- (n=0)"
    ci = f" [{part['ci'][0]:#.3g}, {part['ci'][1]:#.3g}]" if part.get("ci") else ""
    return f"{part['accuracy']:#.3g}{ci} (n={part['n']})"


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
    # Accuracy where the chosen reply is the longer / the shorter / as long: :func:`length_split`
    by_length: dict[str, dict] = field(repr=False, default_factory=dict)


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
        by_length=length_split(pairs, chosen, rejected),
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
