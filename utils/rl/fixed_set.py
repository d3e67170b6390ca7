"""Progress read where it can be seen: a fixed set of held-out prompts, k replies each, paired by prompt.

An RL update's own batch mean is a poor progress bar: each update draws new prompts, and most of a reward
model's variance is between prompts (on ``tiny``'s proxy 0.178 of 0.230), so one update's mean moves by more
than best-of-4 gains. Here every policy (a PPO or RLOO snapshot, DPO, SFT) answers the **same** held-out
prompts, which RL never trains on, ``k`` times each, with the same seeds; every reward is then compared with
SFT's *on the same prompt* and averaged over prompts. The prompt's difficulty cancels out of each difference,
and the standard error is over prompts (the unit that was sampled), so "+0.03 ± 0.006" means something.

Along with the rewards each policy's replies carry the Monte-Carlo KL to SFT (``log π − log π_SFT`` summed over
the reply's tokens, sampled from π itself at temperature 1: the quantity RL's penalty controls), their length
and whether they ended or hit the token cap. Best-of-n needs no samples of its own: it picks among SFT's.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

import numpy as np

from utils.model import chat_format
from utils.evaluate.answers import as_prompt, fitting_prompts, word_count
from utils.evaluate.kl import reply_logprobs, sample_replies
from utils.evaluate.sampling_reports import prompt_key

Conversation = list[dict[str, Any]]
RewardFn = Callable[[list[Conversation], list[str]], Sequence[float]]
ModelContext = Callable[[], ContextManager[Any]]  # ``with ctx() as model:`` the model acting as one policy

PROXY, JUDGE = "proxy", "judge"  # the reward RL trains against, and the independent reward model
WORDS = "words"  # reply length, scored like a reward: how much of a gain is length
SAMPLES_FILE = "fixed_set.json"


def fixed_prompts(heldout_trees: Sequence[Any], tokenizer, n: int, max_prompt_tokens: int) -> list[Conversation]:
    """The first ``n`` root prompts of the held-out trees (never trained on) that fit in ``max_prompt_tokens``.

    The same list in stages 04 and 05 (the trees come in file order, duplicates by text dropped), so their
    points pair prompt by prompt.
    """
    keys = list(dict.fromkeys(prompt_key(t.prompt["text"]) for t in heldout_trees))
    kept, _ = fitting_prompts([as_prompt(k) for k in keys], tokenizer, max_prompt_tokens, n)
    if not kept:
        raise ValueError(f"none of the {len(keys)} held-out root prompts fits in {max_prompt_tokens} tokens: no fixed set to measure on")
    return kept


@dataclass
class PolicySamples:
    """``k`` replies per fixed prompt from one policy, with each reply's KL to the reference."""

    player: str
    prompts: list[str]  # the prompts' texts (their keys), in order
    replies: list[list[str]]
    kl: list[list[float]] | None  # nats per reply; None where it was not measured (SFT itself)
    ended: list[list[bool]]  # False where max_new_tokens cut the reply
    max_new_tokens: int = 0

    @property
    def k(self) -> int:
        return len(self.replies[0]) if self.replies else 0


def sample_policy(player: str, policy: ModelContext, reference: ModelContext | None, tokenizer, prompts: Sequence[Conversation],
                  k: int, max_new_tokens: int, batch_size: int = 8, seed: int = 0) -> PolicySamples:
    """``k`` replies to each prompt sampled from the policy's own distribution, and their KL to the reference.

    ``policy()`` and ``reference()`` are context managers yielding the model acting as each (adapters switch inside
    them), so one function serves the PPO trainer, trl's RLOO model and stage 05's shared base. The seed is the
    same for every policy (common random numbers: where two policies agree they draw the same tokens).
    """
    repeated = [list(p) for p in prompts for _ in range(k)]
    with policy() as model:
        samples = sample_replies(model, tokenizer, repeated, max_new_tokens, batch_size, seed)
        own = reply_logprobs(model, samples, tokenizer.pad_token_id, batch_size) if reference is not None else None
    kl = None
    if reference is not None:
        with reference() as model:
            kl = (own - reply_logprobs(model, samples, tokenizer.pad_token_id, batch_size)).tolist()
    stops = set(chat_format.stop_token_ids(tokenizer))
    replies = [chat_format.decode_reply(s.reply_ids, tokenizer) for s in samples]
    ended = [bool(s.reply_ids) and s.reply_ids[-1] in stops for s in samples]
    rows = lambda xs: [list(xs[i * k : (i + 1) * k]) for i in range(len(prompts))]  # noqa: E731
    return PolicySamples(player, [p[-1]["content"] for p in prompts], rows(replies), rows(kl) if kl is not None else None, rows(ended),
                         max_new_tokens)


Scores = dict[str, list[float]]  # prompt text -> one number per reply


def score_samples(samples: PolicySamples, rewards: Mapping[str, RewardFn]) -> dict[str, Scores]:
    """Every reward's score of every reply: ``{reward: {prompt: [score per reply]}}``."""
    prompts = [as_prompt(p) for p in samples.prompts for _ in range(samples.k)]
    replies = [r for row in samples.replies for r in row]
    out = {}
    for name, fn in {**rewards, WORDS: word_reward}.items():
        flat = [float(s) for s in fn(prompts, replies)]
        out[name] = {p: flat[i * samples.k : (i + 1) * samples.k] for i, p in enumerate(samples.prompts)}
    return out


def word_reward(prompts: Sequence[Conversation], replies: Sequence[str]) -> list[float]:
    """Reply length in words, carried beside the rewards so every gain has its length gain next to it."""
    return [float(word_count(r)) for r in replies]


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def prompt_gains(player: Mapping[str, Sequence[float]], baseline: Mapping[str, Sequence[float]]) -> list[float | None]:
    """Player's mean − baseline's mean on each prompt, in the baseline's order (None where the player did not answer):
    two players' lists pair prompt by prompt."""
    return [float(np.mean(player[p]) - np.mean(row)) if p in player else None for p, row in baseline.items()]


def paired_gain(player: Mapping[str, Sequence[float]], baseline: Mapping[str, Sequence[float]]) -> tuple[float, float]:
    """Mean over the prompts both answered of (player's mean − baseline's mean on that prompt), and its standard
    error over those prompts."""
    return paired_mean([d for d in prompt_gains(player, baseline) if d is not None])


def paired_mean(differences: Sequence[float]) -> tuple[float, float]:
    """Mean of per-prompt differences and its standard error over prompts."""
    if not differences:
        raise ValueError("no prompt in common with the baseline: the fixed sets differ")
    d = np.asarray(differences, dtype=float)
    return float(d.mean()), _se(d)


def mean_se(rows: Mapping[str, Sequence[float]] | Sequence[Sequence[float]]) -> tuple[float, float]:
    """Mean of per-prompt means, and its standard error over prompts."""
    m = np.array([np.mean(r) for r in (rows.values() if isinstance(rows, Mapping) else rows)])
    return float(m.mean()), _se(m)


def best_of_n_scores(scores: Mapping[str, Scores], n: int, selector: str = PROXY) -> dict[str, Scores]:
    """What best-of-n would score, from ``k`` samples per prompt (``k`` a multiple of ``n``).

    The ``k`` samples of a prompt are cut into ``k / n`` disjoint groups of ``n``; in each the ``selector`` picks
    its favourite, and every reward scores that pick. Averaging the groups is an unbiased estimate of
    best-of-n's expected reward with less noise than one group (Stiennon et al. 2020; Gao et al. 2022).
    """
    picks_of = scores[selector]
    out: dict[str, Scores] = {name: {} for name in scores}
    for p, row in picks_of.items():
        if n < 1 or len(row) % n:
            raise ValueError(f"best-of-{n} needs a multiple of {n} samples per prompt, the fixed set has {len(row)}")
        picks = [g * n + int(np.argmax(row[g * n : (g + 1) * n])) for g in range(len(row) // n)]
        for name, s in scores.items():
            out[name][p] = [s[p][i] for i in picks]
    return out


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ π) ≤ log n − (n − 1)/n nats (Stiennon et al. 2020, appendix G.3)."""
    return float(np.log(n) - (n - 1) / n)


def point(player: str, scores: Mapping[str, Scores], baseline: Mapping[str, Scores],
          kl: Sequence[Sequence[float]] | float | None, replies: Sequence[Sequence[str]] | None = None,
          ended: Sequence[Sequence[bool]] | None = None, **extra: Any) -> dict[str, Any]:
    """One point of the reward-against-KL picture: gains paired by prompt against ``baseline`` (SFT), per reward.

    ``kl`` is per-reply samples (averaged, with a standard error over prompts), a number (best-of-n's analytic
    bound) or None (the baseline itself: 0).
    """
    if kl is None:
        kl_mean, kl_se = 0.0, 0.0
    elif isinstance(kl, (int, float)):
        kl_mean, kl_se = float(kl), 0.0
    else:
        kl_mean, kl_se = mean_se(kl)
    gains = {name: paired_gain(scores[name], baseline[name]) for name in scores if name in baseline}
    row: dict[str, Any] = {"player": player, **extra, "kl": kl_mean, "kl_se": kl_se, "prompts": len(next(iter(scores.values())))}
    for name in (PROXY, JUDGE):
        g = gains.get(name, (None, None))
        row[f"{name}_gain"], row[f"{name}_gain_se"] = g
        row[f"{name}_reward"] = mean_se(scores[name])[0] if name in scores else None
    row["gains"] = {name: list(g) for name, g in gains.items()}  # every reward's, the extra judges' included
    if PROXY in scores and PROXY in baseline:  # per prompt: two players' gains compare paired (rl_check against best-of-2)
        row["proxy_gain_by_prompt"] = prompt_gains(scores[PROXY], baseline[PROXY])
    if WORDS in scores:
        row["words"] = mean_se(scores[WORDS])[0]
    elif replies is not None:
        row["words"] = float(np.mean([word_count(r) for rs in replies for r in rs]))
    if ended is not None:
        row["ended_fraction"] = float(np.mean([e for es in ended for e in es]))
        row["capped_fraction"] = 1.0 - row["ended_fraction"]
    return row


def samples_point(samples: PolicySamples, scores: Mapping[str, Scores], baseline: Mapping[str, Scores], **extra: Any) -> dict[str, Any]:
    return point(samples.player, scores, baseline, samples.kl, samples.replies, samples.ended, **extra)


def save_samples(path: str | Path, samples: Sequence[PolicySamples]) -> Path:
    path = Path(path)
    path.write_text(json.dumps([asdict(s) for s in samples], ensure_ascii=False), encoding="utf-8")
    return path


def load_samples(path: str | Path) -> list[PolicySamples]:
    return [PolicySamples(**row) for row in json.loads(Path(path).read_text(encoding="utf-8"))]


class FixedSetProgress:
    """Stage 04's progress bar: at update 0 and every snapshot, the policy answers the fixed prompts ``k`` times.

    :meth:`measure` is what the RL trainers call at each snapshot (``on_snapshot``); ``points`` are the gains
    against update 0 (the SFT policy, the same seeds), ``samples`` the replies, saved for stage 05 to rescore
    with its judges.
    """

    def __init__(self, prompts: Sequence[Conversation], rewards: Mapping[str, RewardFn], tokenizer, replies_per_prompt: int,
                 max_new_tokens: int, batch_size: int = 8, seed: int = 0, player_prefix: str = "ppo",
                 log: Callable[[str], None] | None = print) -> None:
        self.prompts, self.rewards, self.tokenizer = [list(p) for p in prompts], dict(rewards), tokenizer
        self.k, self.max_new_tokens, self.batch_size, self.seed = replies_per_prompt, max_new_tokens, batch_size, seed
        self.prefix, self.log = player_prefix, log or (lambda _: None)
        self.samples: list[PolicySamples] = []
        self.points: list[dict[str, Any]] = []
        self._start: dict[str, Scores] | None = None

    def measure(self, update: int, policy: ModelContext, reference: ModelContext) -> dict[str, Any]:
        if update == 0:  # a fresh run: whatever an earlier run measured is not this run's
            self.samples, self.points, self._start = [], [], None
        samples = sample_policy(f"{self.prefix}@{update}", policy, reference, self.tokenizer, self.prompts, self.k,
                                self.max_new_tokens, self.batch_size, self.seed)
        scores = score_samples(samples, self.rewards)
        if self._start is None:
            self._start = scores  # the first measurement (update 0, the SFT policy) is the baseline
        row = samples_point(samples, scores, self._start, update=update)
        self.samples.append(samples)
        self.points.append(row)
        self.log(format_point(row, f"fixed set ({len(self.prompts)} prompts x {self.k})"))
        return row

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps, so that a resumed run's progress still starts at update 0."""
        return {"samples": [asdict(x) for x in self.samples], "points": self.points, "start": self._start}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.samples = [PolicySamples(**x) for x in state["samples"]]
        self.points, self._start = list(state["points"]), state["start"]

    def save_state(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.state_dict()), encoding="utf-8")

    def load_state(self, path: str | Path) -> bool:
        """Restore what a run measured before it was stopped (its checkpoint's folder keeps it): True if found."""
        if not Path(path).exists():
            return False
        self.load_state_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        return True

    def save(self, out_dir: str | Path) -> Path:
        return save_samples(Path(out_dir) / SAMPLES_FILE, self.samples)


def format_point(row: Mapping[str, Any], what: str = "") -> str:
    def gain(name: str) -> str:
        g, se = row.get(f"{name}_gain"), row.get(f"{name}_gain_se")
        return "n/a" if g is None else f"{g:+.3f} ± {se:.3f}"
    return (f"{row['player']:<10} {what}: KL {row['kl']:.2f} ± {row['kl_se']:.2f}  proxy gain {gain(PROXY)}  "
            f"judge gain {gain(JUDGE)}  words {row.get('words', float('nan')):.0f}  ended {row.get('ended_fraction', float('nan')):.2f}")


@contextmanager
def acting(model, switch: ContextManager[Any] | None = None) -> Iterator[Any]:
    """``with acting(model, switch) as m``: the model, inside ``switch`` (an adapter switch such as trl's
    ``use_adapter``) when one is given; a :data:`ModelContext` for a model whose switch yields nothing."""
    if switch is None:
        yield model
        return
    with switch:
        yield model


def stage_progress(run_dir: str | Path, heldout_trees: Sequence[Any], tokenizer, proxy: RewardFn, *, n_prompts: int,
                   replies_per_prompt: int, max_new_tokens: int, max_prompt_tokens: int, batch_size: int = 8,
                   reward_batch_size: int = 16, seed: int = 0, player_prefix: str = "ppo",
                   log: Callable[[str], None] | None = print) -> FixedSetProgress | None:
    """The fixed-set measurement an RL stage makes at its snapshots: ``proxy`` (the reward it trains against) and
    stage 03's independent judge, on ``n_prompts`` held-out root prompts (``None`` when ``n_prompts`` is 0)."""
    if n_prompts <= 0:
        return None
    from utils.reward.judges import load_judges
    from utils.rl.reward_functions import scorer_reward

    rewards: dict[str, RewardFn] = {PROXY: proxy}
    try:
        rewards[JUDGE] = scorer_reward(load_judges([JUDGE], run_dir)[JUDGE].scorer, batch_size=reward_batch_size)
    except ValueError as e:  # stage 03 trained no judge (judge_fraction 0): the proxy alone
        if log:
            log(f"fixed set without an independent judge: {e}")
    prompts = fixed_prompts(heldout_trees, tokenizer, n_prompts, max_prompt_tokens)
    return FixedSetProgress(prompts, rewards, tokenizer, replies_per_prompt, max_new_tokens, batch_size=batch_size, seed=seed,
                            player_prefix=player_prefix, log=log)
