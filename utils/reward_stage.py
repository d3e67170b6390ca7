"""Stage 03 in steps: two reward models, the proxy and the judge, trained on disjoint trees and evaluated.

The notebook (``notebooks/03_reward.ipynb``) and the script (``python -m recipes.train reward``) call the same
functions in the same order, and :func:`stage_metrics` alone decides what the stage records.

* **proxy**: the reward model PPO (stage 04) optimises;
* **judge**: the same recipe on the other part of the training trees, never optimised against; stage 05
  asks it too (:mod:`utils.judges`).

**Helpful against harmless.** OASST's rankings reward helpfulness; HH-RLHF's harmless pairs prefer the reply
that declines (Bai et al., 2022), and a reward model trained on OASST alone scores them below chance. The stage
can mix a weighted share of HH pairs into training (:func:`mix_hh`). The shipped HH file is split once, by line,
into a training part and an evaluation part (:func:`split_hh`), the same whatever the weight, so HH accuracy is
always measured on lines no model trained on and points of a sweep over the weight compare
(``python -m recipes.hh_sweep``). The HH training lines are divided between the proxy and the judge as the
OASST trees are, disjoint and in the same proportion (``judge_fraction``): two reward models that share no
training data, so the judge stays a second opinion on harmlessness too.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from utils.artifacts import record_path

PROXY, JUDGE = "proxy", "judge"
HELDOUT_SETS = ("eval split", "100-tree file")  # the OASST pairs no reward model trained on


JUDGE_SPLIT_SEED = 1_000_003  # added to the run's seed: which trees train the judge is drawn apart from the eval split


def split_for_judge(trees: Sequence[Any], judge_fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """``(proxy trees, judge trees)``: a disjoint split of the training trees, by tree, deterministic.

    The proxy (the reward model PPO trains against) and the judge learn from different conversations, so the
    judge's verdicts on PPO's answers are not the proxy's opinions repeated. ``judge_fraction=0``: no judge.
    """
    from utils.oasst.split import eval_ids

    if judge_fraction == 0:
        return list(trees), []
    if not 0 < judge_fraction < 1:
        raise ValueError(f"judge_fraction must be in [0, 1), got {judge_fraction}")
    to_judge = eval_ids([t.id for t in trees], judge_fraction, seed + JUDGE_SPLIT_SEED)
    return [t for t in trees if t.id not in to_judge], [t for t in trees if t.id in to_judge]


HH_SPLIT_SEED = 2_000_003  # added to the run's seed: which HH lines evaluate is drawn apart from everything else
HH_JUDGE_SEED = 3_000_017  # ... and which of the training lines go to the judge


def _text_key(pair: Any, seed: int) -> bytes:
    import hashlib
    import json

    text = json.dumps([pair.prompt, pair.chosen, pair.rejected], sort_keys=True)
    return hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()


def _split_by_text(pairs: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """``(rest, picked)``: ``round(fraction · distinct texts)`` of the distinct pairs picked by a seeded hash of their
    text; a pair repeated in the file goes where its first copy goes, so the two parts never share a text."""
    keys = [_text_key(p, seed) for p in pairs]
    distinct = sorted(set(keys))
    picked = set(distinct[: round(len(distinct) * fraction)])
    return [p for p, k in zip(pairs, keys) if k not in picked], [p for p, k in zip(pairs, keys) if k in picked]


def split_hh(pairs: Sequence[Any], eval_fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """``(training part, evaluation part)`` of the HH-RLHF pairs (one a line of the file): disjoint, deterministic,
    independent of the lines' order and of how many of the training lines are used."""
    if not 0 <= eval_fraction <= 1:
        raise ValueError(f"hh_eval_fraction must be in [0, 1], got {eval_fraction}")
    return _split_by_text(pairs, eval_fraction, seed + HH_SPLIT_SEED)


def mix_hh(train_sets: Mapping[str, Sequence[Any]], hh_train: Sequence[Any], weight: float, share: float, judge_fraction: float,
           seed: int = 0) -> tuple[dict[str, list[Any]], dict[str, list[float]], dict[str, int]]:
    """OASST training pairs with HH-RLHF training pairs mixed in: ``(pairs, weight multipliers, HH pairs per model)``.

    Each model gets ``round(share · its OASST pairs)`` HH pairs (capped by its part of ``hh_train``, which is divided
    between the proxy and the judge in the proportion ``judge_fraction``, disjoint), appended after its OASST pairs.
    A multiplier of ``weight`` on each HH pair's loss weight makes it count ``weight`` times one OASST ranking
    (with ``pair_weighting="group"``; one OASST pair with ``"flat"``). ``weight = 0`` mixes nothing in.
    """
    if weight < 0 or share < 0:
        raise ValueError(f"hh_weight and hh_share must be >= 0, got {weight} and {share}")
    parts = {PROXY: list(hh_train), JUDGE: []}
    if train_sets.get(JUDGE):
        parts[PROXY], parts[JUDGE] = _split_by_text(hh_train, judge_fraction, seed + HH_JUDGE_SEED)
    mixed, multipliers, counts = {}, {}, {}
    for name, pairs in train_sets.items():
        hh = parts.get(name, [])[: round(share * len(pairs))] if weight > 0 and pairs else []
        mixed[name] = list(pairs) + hh
        multipliers[name] = [1.0] * len(pairs) + [weight] * len(hh)
        counts[name] = len(hh)
    return mixed, multipliers, counts


def hh_mix_record(weight: float, share: float, eval_fraction: float, hh_train: Sequence[Any], hh_eval: Sequence[Any],
                  counts: Mapping[str, int]) -> dict[str, Any]:
    """How HH-RLHF pairs went into this stage, for its metrics (the ``hh_mix`` entry)."""
    return {"weight": weight, "share": share, "eval_fraction": eval_fraction, "train_lines": len(hh_train),
            "eval_lines": len(hh_eval), "pairs_train": dict(counts)}


def agreement(first: Any, second: Any) -> float:
    """Share of preference pairs on which two reward models prefer the same reply (a tie on one side counts half).

    ``first`` and ``second`` are :class:`utils.reward_eval.PairResult` of the same pairs.
    """
    if first.n != second.n:
        raise ValueError(f"agreement needs the same pairs: {first.n} and {second.n}")
    if not first.n:
        return float("nan")
    votes = []
    for c1, r1, c2, r2 in zip(first.chosen_scores, first.rejected_scores, second.chosen_scores, second.rejected_scores):
        s1, s2 = (c1 > r1) - (c1 < r1), (c2 > r2) - (c2 < r2)
        votes.append(0.5 if 0 in (s1, s2) else float(s1 == s2))
    return sum(votes) / len(votes)


def accuracy_table(evaluated: Mapping[str, Mapping[str, Any]], oasst_sets: Mapping[str, Sequence[Any]]):
    """A DataFrame of stage 03's held-out accuracies: a row per pair set, a column per reward model.

    ``evaluated[model]`` holds the :class:`~utils.reward_eval.PairResult` of ``"OASST held-out"`` (the
    concatenation of the pair sets in ``oasst_sets``, in order) and ``"HH-RLHF harmless"``.
    The length baseline ("the longer reply wins") is on the same pairs; ``agreement`` is how often the
    models prefer the same reply. For each model, ``"<model> longer-preferred acc (n)"`` and ``"<model>
    shorter-preferred acc (n)"`` give its accuracy on the pairs whose chosen reply is the longer / the shorter one,
    with a 95% bootstrap interval over prompts and the count (:func:`utils.reward_eval.length_split`): on the
    shorter-preferred pairs "the longer reply wins" scores 0, so accuracy there is what length cannot explain.
    """
    import pandas as pd

    from utils.reward_eval import format_split, length_baseline_accuracy, length_split, pairwise_accuracy

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


def train_reward_models(
    train_sets: Mapping[str, Sequence[Any]],
    config: Any,
    out_dir: str | Path,
    checkpoint_root: str | Path | None = None,
    save_steps: int = 0,
    log=print,
    multipliers: Mapping[str, Sequence[float]] | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train one reward model per non-empty pair set (``{"proxy": pairs, "judge": pairs}``): the proxy into
    ``out_dir/reward_model``, the judge into ``out_dir/judge/reward_model``. Returns ``(results, seconds)``.
    ``config.length_head`` (ODIN) applies to the proxy alone: the judge stays a plain reward model, so runs with
    and without it are judged by the same kind of model.

    ``multipliers[name]``: a factor on each pair's loss weight (HH pairs mixed in by :func:`mix_hh`)."""
    from utils.reward import train_reward_model

    results, seconds = {}, {}
    for name, pairs in train_sets.items():
        if not pairs:  # judge_fraction = 0: no judge
            continue
        started = time.time()
        results[name] = train_reward_model(
            pairs, config if name == PROXY else replace(config, length_head=False), Path(out_dir) if name == PROXY else Path(out_dir) / name,
            checkpoint_dir=Path(checkpoint_root) / name if checkpoint_root is not None else None, save_steps=save_steps,
            weight_multipliers=(multipliers or {}).get(name),
        )
        seconds[name] = time.time() - started
        if log:
            log(f"{name}: {len(pairs)} pairs, {seconds[name]:.0f} s; trained {results[name].trainable_params:,} of "
                f"{results[name].total_params:,} parameters")
    return results, seconds


def evaluate_reward_models(model_dirs: Mapping[str, Path], oasst_pairs: Sequence[Any], hh_pairs: Sequence[Any],
                           batch_size: int = 32, device=None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every model scores the held-out OASST pairs and the HH-RLHF harmless pairs: ``(scorers, evaluated)``,
    ``evaluated[model]["OASST held-out" | "HH-RLHF harmless"]`` a :class:`~utils.reward_eval.PairResult`."""
    from utils.reward import RewardScorer
    from utils.reward_eval import evaluate_pairs

    scorers = {name: RewardScorer.load(path, device=device) for name, path in model_dirs.items()}
    evaluated = {name: {"OASST held-out": evaluate_pairs(s, oasst_pairs, batch_size=batch_size),
                        "HH-RLHF harmless": evaluate_pairs(s, hh_pairs, batch_size=batch_size)} for name, s in scorers.items()}
    return scorers, evaluated


def length_heads_record(scorers: Mapping[str, Any], pairs: Sequence[Any], batch_size: int = 32) -> dict[str, dict[str, float]]:
    """For each reward model trained with ODIN's length head (``length_head``), on held-out ``pairs``: each head's
    correlation with reply length (characters, every reply once), and the accuracy of the heads' sum, which the
    ranking loss trained, beside the quality head's alone (what scoring uses). Plain models are left out."""
    from utils.reward_eval import correlation, pair_conversations, pairwise_accuracy

    convs = list({json.dumps(c, sort_keys=True): c for p in pairs for c in pair_conversations(p)}.values())
    chars = [len(c[-1]["content"]) for c in convs]
    chosen_rejected = [c for p in pairs for c in pair_conversations(p)]
    out = {}
    for name, scorer in scorers.items():
        if "length" not in getattr(scorer, "heads", ()):
            continue
        by_head = {h: scorer.score(convs, batch_size=batch_size, head=h) for h in ("quality", "length")}
        total = scorer.score(chosen_rejected, batch_size=batch_size, head="total")
        out[name] = {"quality_head_length_corr": correlation(by_head["quality"], chars),
                     "length_head_length_corr": correlation(by_head["length"], chars),
                     "total_accuracy": pairwise_accuracy(total[0::2], total[1::2]), "replies": len(convs)}
    return out


def stage_metrics(
    out_dir: str | Path,
    results: Mapping[str, Any],
    train_sets: Mapping[str, Sequence[Any]],
    train_seconds: Mapping[str, float],
    evaluated: Mapping[str, Mapping[str, Any]],
    oasst_sets: Mapping[str, Sequence[Any]],
    *,
    config: Any,
    trees: Mapping[str, Sequence[Any]],
    data_skipped: Mapping[str, int],
    hh_report: Any = None,
    hh_mix: Mapping[str, Any] | None = None,
    peak_memory_mb: float | None = None,
    processes: int = 1,
    started: float | None = None,
    length_heads: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """What stage 03 records, the same whether a notebook or a script ran it.

    The proxy's figures keep their historical names (``eval_accuracy``, ``model_dir``, ...), the judge's carry a
    ``judge_`` prefix; ``proxy_judge_agreement`` is how often the two prefer the same held-out reply. ``hh_mix``
    says how HH-RLHF pairs were mixed in (``weight``, ``share``, ``eval_fraction``, the split's sizes and the HH
    pairs each model trained on); ``hh_accuracy`` is on the HH evaluation part alone.

    ``accuracy_by_length[model][pair set]`` (model ``"proxy"``, ``"judge"``, ...; pair set ``"OASST held-out"``,
    ``"HH-RLHF harmless"``) is each model's accuracy split by whether the chosen reply is the longer one:
    ``{"longer_preferred" | "shorter_preferred" | "same_length": {"n", "accuracy", "ci": [lo, hi] | None}}``
    (:func:`utils.reward_eval.length_split`; accuracy NaN, null in metrics.json, when ``n`` is 0).
    ``length_head`` says whether the models were trained with ODIN's length head; ``length_heads`` is
    :func:`length_heads_record` for them.
    """
    proxy = evaluated[PROXY]
    oasst, hh = proxy["OASST held-out"], proxy["HH-RLHF harmless"]
    metrics: dict[str, Any] = {
        "eval_accuracy": oasst.accuracy,
        "length_baseline_accuracy": oasst.length_baseline,
        "hh_accuracy": hh.accuracy,
        "hh_length_baseline_accuracy": hh.length_baseline,
        "reward_length_corr": oasst.reward_length_corr,
        "eval_loss": oasst.loss,
        "accuracy_by_length": {model: {name: result.by_length for name, result in sets.items()} for model, sets in evaluated.items()},
        "pairs_train": len(train_sets[PROXY]),
        "pairs_eval": oasst.n,
        "hh_pairs": hh.n,
        "model_dir": record_path(out_dir, results[PROXY].model_dir),
        "train_seconds": train_seconds[PROXY],
        "train_losses": [h["loss"] for h in results[PROXY].log_history if "loss" in h],
        "pair_weighting": config.pair_weighting,
        "length_head": config.length_head,
        "length_heads": dict(length_heads or {}),
        "trees": {name: len(t) for name, t in trees.items()},
        "data_skipped": dict(data_skipped),
        "hh_read": hh_report.as_dict() if hh_report is not None else None,
        "hh_weight": (hh_mix or {}).get("weight", 0.0),
        "hh_mix": dict(hh_mix) if hh_mix is not None else None,
        "peak_memory_mb": peak_memory_mb,
        "processes": processes,
    }
    if JUDGE in results:
        judge = evaluated[JUDGE]
        metrics.update({
            "judge_model_dir": record_path(out_dir, results[JUDGE].model_dir),
            "judge_pairs_train": len(train_sets[JUDGE]),
            "judge_train_seconds": train_seconds[JUDGE],
            "judge_eval_accuracy": judge["OASST held-out"].accuracy,
            "judge_hh_accuracy": judge["HH-RLHF harmless"].accuracy,
            "judge_reward_length_corr": judge["OASST held-out"].reward_length_corr,
            "proxy_judge_agreement": agreement(oasst, judge["OASST held-out"]),
        })
    if started is not None:
        metrics["seconds"] = time.time() - started
    return metrics


def reader_view(pairs: Sequence[Any], scorer: Any) -> str:
    """One held-out conversation exactly as the reward model reads it (a follow-up turn, so roles show)."""
    from utils import chat_format
    from utils.reward import encode_conversation

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
