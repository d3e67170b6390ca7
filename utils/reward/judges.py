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

from utils.model import chat_format
from utils.pipeline.artifacts import StageNotRun, stage_path
from utils.model.modeling import default_device
from utils.reward.evaluation import Scorer
from utils.pipeline.stages import PPO, REWARD

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

        from utils.model.source import refuse_gguf

        refuse_gguf(name_or_path, "judge")
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


def lead_judge(judges: Mapping[str, Judge]) -> str:
    """The judge the tables lead with: the first one the RL stages were not trained against."""
    return next((j for j, judge in judges.items() if not judge.trained_against), next(iter(judges)))


def load_judges(specs: Sequence[str], run_dir: str | Path, device: torch.device | str | None = None) -> dict[str, Judge]:
    """The judges named in ``specs`` (see the module docstring), each marked with whether PPO trained against it.

    Stage 04 records the reward model it trained against (``reward_model_dir``); where it has not run, the proxy
    is the one it would train against.
    """
    from utils.reward.model import RewardScorer

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


# ---------------------------------------------------------------------------------------------- judging players


def score_players(
    judges: Mapping[str, Judge],
    prompts: Mapping[str, str | Conversation],
    players: Mapping[str, Mapping[str, Sequence[str]]],
    batch_size: int = 16,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``scores[judge][player][prompt]``: every judge's reward for every answer of every player."""
    from utils.evaluate.answers import score_answers

    return {j: {p: score_answers(judge.scorer, prompts, a, batch_size=batch_size) for p, a in players.items()}
            for j, judge in judges.items()}


def judge_tournaments(scores: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]], **tournament_kwargs) -> dict[str, Any]:
    """One tournament per judge (``utils.evaluate.tournament.run_tournament``): the same games, each judge deciding them."""
    from utils.evaluate.tournament import run_tournament

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
            "win_rate_intervals": {a: {b: w.as_dict() for b, w in row.items()} for a, row in tour.win_rate_intervals.items()},
            "games": len(tour.games),
            "rewards": {p: {"mean": s["reward_mean"], "ci": s["reward_ci"], "mean_heldout": s["reward_mean_heldout"]}
                        for p, s in summaries[j].items()},
        }
    return out


def plot_elo_by_judge(tournaments: Mapping[str, Any], judges: Mapping[str, Judge], path: str | Path | None = None):
    """Elo ratings and intervals, one panel per judge, players in the same order (the first independent judge's)."""
    import matplotlib.pyplot as plt

    from utils.evaluate.tournament import ELO_INITIAL

    lead = lead_judge(judges)
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
