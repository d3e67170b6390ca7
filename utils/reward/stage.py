"""Stage 03 in steps: two reward models, the proxy and the judge, trained on disjoint trees and evaluated.

The notebook (``notebooks/03_reward.ipynb``) and the script (``python -m recipes.train reward``) call the same
steps in the same order, :func:`load_data`, :func:`train`, :func:`evaluate`, and :func:`stage_metrics` alone
decides what the stage records. Every step reads its settings from :class:`utils.reward.params.RewardParams`.

* **proxy**: the reward model PPO (stage 04) optimises;
* **judge**: the same recipe on the other part of the training trees, never optimised against; stage 05
  asks it too (:mod:`utils.reward.judges`).

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from utils.pipeline.artifacts import record_path
from utils.reward.params import RewardParams

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


def hh_mix_record(params: RewardParams, data: "RewardData") -> dict[str, Any]:
    """How HH-RLHF pairs went into this stage, for its metrics (the ``hh_mix`` entry)."""
    return {"weight": params.hh_weight, "share": params.hh_share, "eval_fraction": params.hh_eval_fraction,
            "train_lines": len(data.hh_train), "eval_lines": len(data.hh_eval), "pairs_train": dict(data.hh_counts)}


# ----------------------------------------------------------------------------------------------------- the steps


@dataclass
class RewardData:
    """Step 1, :func:`load_data`: the trees, their preference pairs and the HH-RLHF pairs, and what each model trains
    and is evaluated on."""

    trees: dict[str, list]  # "train: proxy", "train: judge", "eval split", "100-tree file"
    groups: dict[str, list]  # each part's ranking groups
    pairs: dict[str, list]  # each part's preference pairs
    data_skipped: dict[str, int]  # OASST records skipped, by reason (on_error="skip")
    hh_report: Any  # what was read of the HH-RLHF file, and how
    hh_pairs: list
    hh_train: list  # the HH file's training part (split_hh), whatever hh_weight is
    hh_eval: list  # ... and its evaluation part
    oasst_sets: dict[str, list]  # each model's OASST training pairs
    train_sets: dict[str, list]  # ... with the HH pairs mixed in (mix_hh)
    multipliers: dict[str, list[float]]  # a factor on each training pair's loss weight
    hh_counts: dict[str, int]  # HH pairs mixed into each model's training
    eval_sets: dict[str, list]  # the OASST pairs no model trained on, by part (HELDOUT_SETS)
    hh_heldout: list  # the HH pairs evaluated

    @property
    def eval_pairs(self) -> list:
        return [p for ps in self.eval_sets.values() for p in ps]


def load_data(params: RewardParams) -> RewardData:
    """Split the trees (train / eval by tree, the training trees into proxy / judge), make each part's preference
    pairs, read and split the HH-RLHF file, and mix it into training as ``hh_weight`` and ``hh_share`` say."""
    from utils.oasst import Report, preference_pairs, read_hh_pairs, rm_groups

    split = params.load_split()
    proxy_trees, judge_trees = split_for_judge(split.train, params.judge_fraction, params.seed)
    trees = {"train: proxy": proxy_trees, "train: judge": judge_trees, "eval split": split.eval, "100-tree file": split.heldout}
    groups = {name: rm_groups(t) for name, t in trees.items()}
    pairs = {name: preference_pairs(g) for name, g in groups.items()}
    hh_report = Report()
    hh_pairs = read_hh_pairs(params.hh_path, on_error=params.on_error, report=hh_report)
    hh_train, hh_eval = split_hh(hh_pairs, params.hh_eval_fraction, params.seed)
    cap = params.max_train_pairs
    oasst_sets = {PROXY: pairs["train: proxy"][:cap], JUDGE: pairs["train: judge"][:cap]}
    train_sets, multipliers, hh_counts = mix_hh(oasst_sets, hh_train, params.hh_weight, params.hh_share, params.judge_fraction,
                                                params.seed)
    return RewardData(trees, groups, pairs, split.report.as_dict()["skipped"], hh_report, hh_pairs, hh_train, hh_eval,
                      oasst_sets, train_sets, multipliers, hh_counts,
                      {name: pairs[name][: params.max_eval_pairs] for name in HELDOUT_SETS}, hh_eval[: params.max_hh_pairs])


@dataclass
class TrainedModels:
    """Step 2, :func:`train`: one :class:`~utils.reward.training.TrainResult` per model, its seconds, the peak memory."""

    results: dict[str, Any]
    seconds: dict[str, float]
    peak_memory_mb: float | None = None


def train(params: RewardParams, data: RewardData, out_dir: str | Path, checkpoint_root: str | Path | None = None,
          log: Callable[[str], None] | None = print) -> TrainedModels:
    """Train the proxy (and the judge, unless ``judge_fraction`` is 0) on their pairs: :func:`train_reward_models`."""
    from utils.model.modeling import peak_memory_mb, reset_peak_memory

    if log:
        log(f"HH-RLHF pairs mixed in (weight {params.hh_weight}): "
            + ", ".join(f"{n} {data.hh_counts[n]} beside {len(data.oasst_sets[n])} OASST pairs" for n in data.oasst_sets))
    reset_peak_memory()
    results, seconds = train_reward_models(data.train_sets, params, out_dir, checkpoint_root, params.save_steps, log=log,
                                           multipliers=data.multipliers)
    return TrainedModels(results, seconds, peak_memory_mb())


@dataclass
class Evaluation:
    """Step 3, :func:`evaluate`: each model's scorer, its :class:`~utils.reward.evaluation.PairResult` per held-out set
    (``"OASST held-out"``, ``"HH-RLHF harmless"``), and ODIN's heads measured (:func:`length_heads_record`)."""

    scorers: dict[str, Any]
    results: dict[str, dict[str, Any]]
    length_heads: dict[str, dict[str, float]]


def evaluate(params: RewardParams, data: RewardData, trained: TrainedModels, device=None) -> Evaluation:
    """Every trained model scores the held-out OASST pairs and the HH evaluation pairs."""
    scorers, results = evaluate_reward_models({n: r.model_dir for n, r in trained.results.items()}, data.eval_pairs,
                                              data.hh_heldout, batch_size=params.score_batch_size, device=device)
    return Evaluation(scorers, results, length_heads_record(scorers, data.eval_pairs, batch_size=params.score_batch_size))


# ----------------------------------------------------------------------------------------------------- helpers


def agreement(first: Any, second: Any) -> float:
    """Share of preference pairs on which two reward models prefer the same reply (a tie on one side counts half).

    ``first`` and ``second`` are :class:`utils.reward.evaluation.PairResult` of the same pairs.
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


def train_reward_models(
    train_sets: Mapping[str, Sequence[Any]],
    config: RewardParams,
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
    from utils.reward.training import train_reward_model

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
                           batch_size: int = 32, device=None, log=print) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Every model scores the held-out OASST pairs and the HH-RLHF harmless pairs: ``(scorers, evaluated)``,
    ``evaluated[model]["OASST held-out" | "HH-RLHF harmless"]`` a :class:`~utils.reward.evaluation.PairResult`."""
    from utils.model.modeling import Countdown
    from utils.reward.evaluation import evaluate_pairs
    from utils.reward.model import RewardScorer

    scorers = {name: RewardScorer.load(path, device=device) for name, path in model_dirs.items()}
    countdown = Countdown(len(scorers) * (len(oasst_pairs) + len(hh_pairs)), "pairs", out=log)
    evaluated: dict[str, dict[str, Any]] = {}
    for name, scorer in scorers.items():
        evaluated[name] = {}
        for part, pairs in (("OASST held-out", oasst_pairs), ("HH-RLHF harmless", hh_pairs)):
            evaluated[name][part] = evaluate_pairs(scorer, pairs, batch_size=batch_size)
            countdown.tick(f"{name}: scored the {part} pairs", parts=len(pairs))
    return scorers, evaluated


def length_heads_record(scorers: Mapping[str, Any], pairs: Sequence[Any], batch_size: int = 32) -> dict[str, dict[str, float]]:
    """For each reward model trained with ODIN's length head (``length_head``), on held-out ``pairs``: each head's
    correlation with reply length (characters, every reply once), and the accuracy of the heads' sum, which the
    ranking loss trained, beside the quality head's alone (what scoring uses). Plain models are left out."""
    from utils.reward.evaluation import correlation, pair_conversations, pairwise_accuracy

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


def stage_metrics(out_dir: str | Path, params: RewardParams, data: RewardData, trained: TrainedModels, evaluation: Evaluation,
                  *, processes: int = 1, started: float | None = None) -> dict[str, Any]:
    """What stage 03 records, the same whether a notebook or a script ran it.

    The proxy's figures keep their historical names (``eval_accuracy``, ``model_dir``, ...), the judge's carry a
    ``judge_`` prefix; ``proxy_judge_agreement`` is how often the two prefer the same held-out reply. ``hh_mix``
    says how HH-RLHF pairs were mixed in (``weight``, ``share``, ``eval_fraction``, the split's sizes and the HH
    pairs each model trained on); ``hh_accuracy`` is on the HH evaluation part alone.

    ``accuracy_by_length[model][pair set]`` (model ``"proxy"``, ``"judge"``, ...; pair set ``"OASST held-out"``,
    ``"HH-RLHF harmless"``) is each model's accuracy split by whether the chosen reply is the longer one:
    ``{"longer_preferred" | "shorter_preferred" | "same_length": {"n", "accuracy", "ci": [lo, hi] | None}}``
    (:func:`utils.reward.evaluation.length_split`; accuracy NaN, null in metrics.json, when ``n`` is 0).
    ``length_head`` says whether the models were trained with ODIN's length head; ``length_heads`` is
    :func:`length_heads_record` for them. ``processes``: how many ran the training (``accelerate launch``).
    """
    evaluated, results, hh_mix = evaluation.results, trained.results, hh_mix_record(params, data)
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
        "pairs_train": len(data.train_sets[PROXY]),
        "pairs_eval": oasst.n,
        "hh_pairs": hh.n,
        "model_dir": record_path(out_dir, results[PROXY].model_dir),
        "train_seconds": trained.seconds[PROXY],
        "train_losses": [h["loss"] for h in results[PROXY].log_history if "loss" in h],
        "pair_weighting": params.pair_weighting,
        "length_head": params.length_head,
        "length_heads": dict(evaluation.length_heads),
        "trees": {name: len(t) for name, t in data.trees.items()},
        "data_skipped": dict(data.data_skipped),
        "hh_read": data.hh_report.as_dict() if data.hh_report is not None else None,
        "hh_weight": params.hh_weight,
        "hh_mix": hh_mix,
        "peak_memory_mb": trained.peak_memory_mb,
        "processes": processes,
    }
    if JUDGE in results:
        judge = evaluated[JUDGE]
        metrics.update({
            "judge_model_dir": record_path(out_dir, results[JUDGE].model_dir),
            "judge_pairs_train": len(data.train_sets[JUDGE]),
            "judge_train_seconds": trained.seconds[JUDGE],
            "judge_eval_accuracy": judge["OASST held-out"].accuracy,
            "judge_hh_accuracy": judge["HH-RLHF harmless"].accuracy,
            "judge_reward_length_corr": judge["OASST held-out"].reward_length_corr,
            "proxy_judge_agreement": agreement(oasst, judge["OASST held-out"]),
        })
    if started is not None:
        metrics["seconds"] = time.time() - started
    return metrics
