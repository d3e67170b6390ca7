"""Judges for stage 05: the reward model PPO optimised (the *proxy*) and judges it never saw.

A policy trained against a reward model learns that model's blind spots as well as people's preferences
(reward over-optimisation: Gao et al., 2022, "Scaling Laws for Reward Model Overoptimization"). So a
result measured with the proxy alone says how well PPO optimised, not how good its answers are. The kit
therefore scores every answer with several judges and marks which one PPO was trained against:

* ``"proxy"``: stage 03's reward model, the one stage 04 trained against;
* ``"judge"``: stage 03's second reward model, same recipe, trained on a *disjoint* part of the training
  trees (Gao et al.'s proxy/gold set-up at the kit's scale: the gold model there is larger and trained on
  more, here it is a peer that PPO never optimised);
* a hub name or folder of a released reward model that reads ``(question, answer)`` text pairs, e.g.
  OpenAssistant's ``OpenAssistant/reward-model-deberta-v3-large-v2`` (the GPU profiles' judge).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from utils import chat_format
from utils.artifacts import StageNotRun, read_metrics, stage_path
from utils.modeling import default_device
from utils.reward_eval import Scorer
from utils.stages import PPO, REWARD

PROXY = "proxy"
HELDOUT_JUDGE = "judge"
STAGE_JUDGES = {PROXY: "model_dir", HELDOUT_JUDGE: "judge_model_dir"}  # judge name -> key in 03_reward's metrics

Conversation = Sequence[dict[str, str]]


@dataclass
class Judge:
    name: str
    scorer: Scorer
    source: str  # the model directory or hub name it was loaded from
    trained_against: bool  # True for the reward model PPO optimised

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "trained_against": self.trained_against}


class TextPairScorer:
    """A released reward model that reads ``tokenizer(question, answer)``, as OpenAssistant's DeBERTa models do.

    The question is the conversation before the reply: the user's text for a single-turn prompt, the turns
    written out (``User: …``/``Assistant: …``) for a longer one. Pairs longer than the model's window are cut
    from the question's start, so the reply (what is judged) is kept.
    """

    def __init__(self, model, tokenizer, max_length: int = 512, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def load(cls, name_or_path: str, device: torch.device | str | None = None, max_length: int = 512) -> "TextPairScorer":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=torch.float32)
        except OSError as e:
            raise OSError(f"cannot load the judge {name_or_path!r}: {' '.join(str(e).split())[:300]}") from None
        if model.config.num_labels != 1:
            raise ValueError(f"judge {name_or_path!r} has {model.config.num_labels} outputs; a reward model has 1")
        limit = getattr(model.config, "max_position_embeddings", None) or max_length
        return cls(model, tokenizer, min(max_length, limit), device)

    @staticmethod
    def question(context: Conversation) -> str:
        turns = chat_format.normalize(context)
        if len(turns) == 1:
            return turns[0]["content"]
        names = {"user": "User", "assistant": "Assistant", "system": "System"}
        return "\n\n".join(f"{names[t['role']]}: {t['content']}" for t in turns)

    def _fitting_answer(self, answer: str) -> str:
        """The answer, cut at its end only if it alone would not leave room for some of the question."""
        room = self.max_length - 32  # special tokens and the end of the question
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return answer if len(ids) <= room else self.tokenizer.decode(ids[:room])

    @torch.no_grad()
    def score(self, conversations: Sequence[Conversation], batch_size: int = 16) -> list[float]:
        out: list[float] = []
        pairs = [(self.question(c), self._fitting_answer(r)) for c, r in map(chat_format.split_prompt_reply, conversations)]
        self.tokenizer.truncation_side = "left"  # a long question loses its oldest text, never the reply
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            enc = self.tokenizer([q for q, _ in batch], [a for _, a in batch], padding=True, truncation="only_first",
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            out += self.model(**enc).logits[:, 0].float().cpu().tolist()
        return out


def _same_path(a: str | Path, b: str | Path | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


def load_judges(specs: Sequence[str], run_dir: str | Path, device: torch.device | str | None = None) -> dict[str, Judge]:
    """The judges named in ``specs`` (see the module docstring), each marked with whether PPO trained against it.

    Stage 04 records the reward model it trained against (``reward_model_dir``); where it has not run, the proxy
    is the one it would train against.
    """
    from utils.reward import RewardScorer

    if not specs:
        raise ValueError("judges: name at least one (e.g. ['proxy', 'judge'])")
    try:
        trained_with = stage_path(run_dir, PPO, "reward_model_dir")
    except (StageNotRun, KeyError):
        trained_with = None
    judges: dict[str, Judge] = {}
    for spec in specs:
        if spec in STAGE_JUDGES:
            try:
                path = stage_path(run_dir, REWARD, STAGE_JUDGES[spec])
            except KeyError:
                raise ValueError(f"judge {spec!r}: stage 03_reward trained no such model (set judge_fraction > 0 there)") from None
            scorer: Scorer = RewardScorer.load(path, device=device)
            against = _same_path(path, trained_with) if trained_with is not None else spec == PROXY
            judges[spec] = Judge(spec, scorer, str(path), against)
        else:
            judges[spec] = Judge(spec, TextPairScorer.load(spec, device=device), spec, _same_path(spec, trained_with) if Path(spec).exists() else False)
    return judges


def independent_judges(judges: dict[str, Judge]) -> list[str]:
    return [name for name, j in judges.items() if not j.trained_against]


def stage_reward_models(run_dir: str | Path) -> dict[str, str]:
    """``{judge name: model dir}`` of the reward models stage 03 trained (for the record)."""
    metrics = read_metrics(run_dir, REWARD)
    return {name: metrics[key] for name, key in STAGE_JUDGES.items() if key in metrics}


# ---------------------------------------------------------------------------------------------- judging players


def score_players(
    judges: Mapping[str, Judge],
    prompts: Mapping[str, str | Conversation],
    players: Mapping[str, Mapping[str, Sequence[str]]],
    batch_size: int = 16,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``scores[judge][player][prompt]``: every judge's reward for every answer of every player."""
    from utils.evaluate import score_answers

    return {j: {p: score_answers(judge.scorer, prompts, a, batch_size=batch_size) for p, a in players.items()}
            for j, judge in judges.items()}


def judge_tournaments(scores: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], **tournament_kwargs) -> dict[str, Any]:
    """One tournament per judge (``utils.tournament.run_tournament``): the same games, each judge deciding them."""
    from utils.tournament import run_tournament

    return {j: run_tournament(by_player, **tournament_kwargs) for j, by_player in scores.items()}


def judges_metrics(judges: Mapping[str, Judge], tournaments: Mapping[str, Any], summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``judges`` entry of stage 05's metrics: per judge, where it came from, whether PPO trained against it,
    its Elo ratings (``player -> {rating, ci, games}``), win rates and every player's mean reward with its interval."""
    out = {}
    for j, judge in judges.items():
        tour = tournaments[j]
        out[j] = {
            **judge.describe(),
            "elo": {p: r.as_dict() for p, r in tour.elo.items()},
            "win_rates": tour.win_rates,
            "games": len(tour.games),
            "rewards": {p: {"mean": s["reward_mean"], "ci": s["reward_ci"], "mean_heldout": s["reward_mean_heldout"]}
                        for p, s in summaries[j].items()},
        }
    return out


def plot_elo_by_judge(tournaments: Mapping[str, Any], judges: Mapping[str, Judge], path: str | Path | None = None):
    """Elo ratings and intervals, one panel per judge, players in the same order (the first independent judge's)."""
    import matplotlib.pyplot as plt

    from utils.tournament import ELO_INITIAL

    lead = next((j for j in judges if not judges[j].trained_against), next(iter(judges)))
    order = sorted(tournaments[lead].elo, key=lambda p: tournaments[lead].elo[p].rating)
    fig, axes = plt.subplots(1, len(judges), figsize=(5.2 * len(judges), 0.45 * len(order) + 1.6), sharey=True, squeeze=False)
    for ax, j in zip(axes[0], judges):
        elo = tournaments[j].elo
        names = [p for p in order if p in elo]
        mid = [elo[p].rating for p in names]
        err = [[elo[p].rating - elo[p].lo for p in names], [elo[p].hi - elo[p].rating for p in names]]
        ax.errorbar(mid, range(len(names)), xerr=err, fmt="o", capsize=4)
        ax.set_yticks(range(len(names)), names)
        ax.axvline(ELO_INITIAL, color="grey", lw=0.8, ls=":")
        ax.set_title(f"judge: {j}" + (" (PPO trained against it)" if judges[j].trained_against else " (independent)"), fontsize=10)
        ax.set_xlabel("Elo (bootstrap median, 95% interval)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


# ---------------------------------------------------------------------------------------------- stage 03: the judge's trees

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
    models prefer the same reply.
    """
    import pandas as pd

    from utils.reward_eval import length_baseline_accuracy, pairwise_accuracy

    first = next(iter(evaluated.values()))
    rows: dict[str, dict[str, Any]] = {}
    start = 0
    for part, pairs in oasst_sets.items():
        window = slice(start, start + len(pairs))
        rows[f"OASST {part}"] = {"pairs": len(pairs), **{m: pairwise_accuracy(r["OASST held-out"].chosen_scores[window], r["OASST held-out"].rejected_scores[window])
                                                         for m, r in evaluated.items()}, "length baseline": length_baseline_accuracy(pairs)}
        start += len(pairs)
    for name, label in (("OASST held-out", "OASST held-out, both"), ("HH-RLHF harmless", "HH-RLHF harmless")):
        rows[label] = {"pairs": first[name].n, **{m: r[name].accuracy for m, r in evaluated.items()}}
        rows[label]["length baseline"] = first[name].length_baseline
        if len(evaluated) == 2:
            a, b = (r[name] for r in evaluated.values())
            rows[label]["agreement"] = agreement(a, b)
    return pd.DataFrame(rows).T.astype({"pairs": int}).round(3)
