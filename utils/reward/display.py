"""What stage 03's notebook shows: the reward models' training curves, reward against reply length, the held-out
accuracy table, one conversation as the reward model reads it, and the replies it scores highest and lowest."""

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


def accuracy_table(evaluated: Mapping[str, Mapping[str, Any]], oasst_sets: Mapping[str, Sequence[Any]]):
    """A DataFrame of stage 03's held-out accuracies: a row per pair set, a column per reward model.

    ``evaluated[model]`` holds the :class:`~utils.reward.evaluation.PairResult` of ``"OASST held-out"`` (the
    concatenation of the pair sets in ``oasst_sets``, in order) and ``"HH-RLHF harmless"``.
    The length baseline ("the longer reply wins") is on the same pairs; ``agreement`` is how often the
    models prefer the same reply. For each model, ``"<model> longer-preferred acc (n)"`` and ``"<model>
    shorter-preferred acc (n)"`` give its accuracy on the pairs whose chosen reply is the longer / the shorter one,
    with a 95% bootstrap interval over prompts and the count (:func:`utils.reward.evaluation.length_split`): on the
    shorter-preferred pairs "the longer reply wins" scores 0, so accuracy there is what length cannot explain.
    """
    from types import SimpleNamespace

    import pandas as pd

    from utils.reward.evaluation import format_split, length_baseline_accuracy, length_split, pairwise_accuracy
    from utils.reward.stage import agreement

    def split_columns(splits: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        return {f"{m} {label} acc (n)": format_split(split[key]) for m, split in splits.items()
                for key, label in (("longer_preferred", "longer-preferred"), ("shorter_preferred", "shorter-preferred"))}

    first = next(iter(evaluated.values()))
    rows: dict[str, dict[str, Any]] = {}
    start = 0
    for part, pairs in oasst_sets.items():
        window = slice(start, start + len(pairs))
        scores = {m: (r["OASST held-out"].chosen_scores[window], r["OASST held-out"].rejected_scores[window]) for m, r in evaluated.items()}
        rows[f"OASST {part}"] = {"pairs": len(pairs), **{m: pairwise_accuracy(*cr) for m, cr in scores.items()},
                                 "length baseline": length_baseline_accuracy(pairs),
                                 **split_columns({m: length_split(pairs, *cr) for m, cr in scores.items()})}
        if len(scores) == 2:  # on this part's pairs alone, as on the whole set below
            a, b = (SimpleNamespace(n=len(pairs), chosen_scores=c, rejected_scores=r) for c, r in scores.values())
            rows[f"OASST {part}"]["agreement"] = agreement(a, b)
        start += len(pairs)
    for name, label in (("OASST held-out", "OASST held-out, both"), ("HH-RLHF harmless", "HH-RLHF harmless")):
        rows[label] = {"pairs": first[name].n, **{m: r[name].accuracy for m, r in evaluated.items()}}
        rows[label]["length baseline"] = first[name].length_baseline
        if len(evaluated) == 2:
            a, b = (r[name] for r in evaluated.values())
            rows[label]["agreement"] = agreement(a, b)
        rows[label].update(split_columns({m: r[name].by_length for m, r in evaluated.items()}))
    numbers = ["pairs", *evaluated, "length baseline"] + (["agreement"] if len(evaluated) == 2 else [])
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table[numbers + [c for c in table.columns if c not in numbers]]
    return table.astype({"pairs": int, **{c: float for c in numbers[1:]}}).round(3)


def accuracy_views(table):
    """:func:`accuracy_table` as two narrow tables a screen can hold: the accuracies (a column per reward model, the
    length baseline, the agreement), and each model's accuracy on the longer- and the shorter-preferred pairs
    (interval and count), a column pair per model under its name."""
    import pandas as pd

    split = [c for c in table.columns if c.endswith(" acc (n)")]
    by_length = table[split].copy()
    by_length.columns = pd.MultiIndex.from_tuples(
        [(c.split(" ")[0], c.split(" ")[1].replace("-", " ")) for c in split])  # ("proxy", "longer preferred")
    return table.drop(columns=split), by_length


def reader_view(pairs: Sequence[Any], scorer: Any) -> str:
    """One held-out conversation exactly as the reward model reads it (a follow-up turn, so roles show)."""
    from utils.model import chat_format
    from utils.reward.model import encode_conversation

    example = next((p for p in pairs if len(p.prompt) > 1), pairs[0])
    conversation = list(example.prompt) + [{"role": "assistant", "content": example.chosen}]
    whole = len(chat_format.encode(conversation, scorer.tokenizer, add_bos=True).input_ids)
    ids = encode_conversation(conversation, scorer.tokenizer, scorer.max_length)
    return f"{len(ids)} of the conversation's {whole} tokens:\n{scorer.tokenizer.decode(ids)}"


def extremes_table(replies: Sequence[tuple[str, float]], n: int = 3, width: int = 160):
    """The ``n`` replies a reward model scores highest and lowest, with their reward and length."""
    import pandas as pd

    by_reward = sorted(replies, key=lambda reply: reply[1], reverse=True)
    shorten = lambda text: " ".join(text.split())[:width] + ("…" if len(text) > width else "")  # noqa: E731
    rows = [("highest", round(r, 2), len(t), shorten(t)) for t, r in by_reward[:n]]
    rows += [("lowest", round(r, 2), len(t), shorten(t)) for t, r in by_reward[-n:]]
    return pd.DataFrame(rows, columns=["", "reward", "characters", "reply"])
