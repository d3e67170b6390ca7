"""Best-of-n: a reward model used at answer time instead of in training.

Sample n replies from the SFT policy, score each with the *proxy* (stage 03's reward model, the one PPO trains
against) and answer with the one it scores highest. Nothing is trained; the price is paid at every answer:
n samples and n reward-model calls instead of one. Stiennon et al. (2020) and Gao et al. (2022) set RL against
this baseline, and Gao et al. measure over-optimisation along it: the proxy's score rises with n by
construction, an independent judge's need not.

Details worth naming:

* **Nested samples, common random numbers**: the candidates are :func:`utils.evaluate.answers.generate_answers`'s
  samples, sample s drawn with seed ``seed + 1000 s``, as every player's are. Answer j of best-of-n chooses
  among samples ``j·n … j·n + n − 1``; so best-of-1 is plain sampling with the same seed, answer for answer,
  and best-of-4's first answer chooses among the first 4 of best-of-16's candidates. One sampling pass of
  ``max(n) × samples_per_prompt`` replies serves every n.
* **KL to the policy it samples from** has a closed form bound, ``log n − (n − 1)/n`` nats (Stiennon et al.,
  2020, appendix G.3; Beirami et al., 2024, show it is an upper bound): :func:`kl_bound`. The results table
  shows it where the run's models show a Monte-Carlo estimate.
* A greedy preset gives one answer per prompt whatever n is: best-of-n needs sampling, and skips such presets.
* Ties go to the earlier sample.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

PREFIX = "best_of_"


def player_name(n: int, preset: str) -> str:
    return f"{PREFIX}{n} ({preset})"


def kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n ‖ the sampled policy), nats per reply: ``log n − (n − 1)/n``."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def check_ns(ns: Sequence[int]) -> list[int]:
    """The n values, each at least 1, without repeats, in increasing order."""
    bad = [n for n in ns if not isinstance(n, int) or n < 1]
    if bad:
        raise ValueError(f"best_of_n: every n is an int >= 1, got {bad[0]!r}")
    return sorted(set(ns))


def pick_best(candidates: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float]], n: int,
              answers_per_prompt: int = 1) -> dict[str, list[str]]:
    """``{prompt: [answer j for each j]}``: answer j is the highest-scored of candidates ``j·n … j·n + n − 1``."""
    out: dict[str, list[str]] = {}
    for key, replies in candidates.items():
        rewards = scores[key]
        if len(replies) < n * answers_per_prompt:
            raise ValueError(f"best-of-{n}: {len(replies)} candidates for a prompt, {n * answers_per_prompt} needed")
        chosen = []
        for j in range(answers_per_prompt):
            block = range(j * n, (j + 1) * n)
            chosen.append(replies[max(block, key=lambda i: (rewards[i], -i))])
        out[key] = chosen
    return out


def best_of_n(
    model,
    tokenizer,
    prompts: Sequence[str],
    sampling,
    ns: Sequence[int],
    proxy,
    answers_per_prompt: int = 1,
    batch_size: int = 8,
    score_batch_size: int = 16,
    seed: int = 0,
    after_each_sample: Callable[[], None] | None = None,
) -> dict[int, dict[str, list[str]]]:
    """``{n: {prompt key: [answer]}}`` for every n: candidates sampled once from ``model`` (the SFT policy) with
    ``sampling``, scored once by ``proxy`` (a scorer), the best of each block of n kept. ``after_each_sample``: called
    after each pass over the prompts (a progress line)."""
    from utils.evaluate.answers import generate_answers, score_answers
    from utils.evaluate.sampling_reports import prompt_key

    ns = check_ns(ns)
    if not sampling.do_sample:
        raise ValueError("best-of-n needs a sampling preset: a greedy one gives the same reply n times")
    candidates = generate_answers(model, tokenizer, prompts, sampling, samples=max(ns) * answers_per_prompt,
                                  batch_size=batch_size, seed=seed, after_each_sample=after_each_sample)
    scores = score_answers(proxy, {prompt_key(p): p for p in prompts}, candidates, batch_size=score_batch_size)
    return {n: pick_best(candidates, scores, n, answers_per_prompt) for n in ns}


def best_of_n_players(models, prompts: Sequence[str], configs: Mapping[str, Any], ns: Sequence[int], judges: Mapping[str, Any],
                      run_dir, answers_per_prompt: int = 1, batch_size: int = 8, score_batch_size: int = 16, seed: int = 0,
                      log=print) -> tuple[dict[str, dict[str, list[str]]], dict[str, int]]:
    """Stage 05's best-of-n players: ``(answers, {player: n})``, one per n and sampling preset, picked among the SFT
    model's samples by the proxy (:func:`proxy_scorer`). A greedy preset is passed over (said in ``log``); nothing is
    sampled when ``ns`` is empty or the run has no SFT model."""
    from utils.evaluate.models import use
    from utils.model.modeling import Countdown

    answers: dict[str, dict[str, list[str]]] = {}
    best_of: dict[str, int] = {}
    if not ns or "sft" not in models.names:
        return answers, best_of
    proxy = proxy_scorer(judges, run_dir)
    passes = max(ns) * answers_per_prompt  # each a reply to every prompt
    sampled = [preset for preset, sampling in configs.items() if sampling.do_sample]
    countdown = Countdown(passes * len(sampled), "passes", out=log)
    with use(models, "sft") as model:
        for preset, sampling in configs.items():
            if not sampling.do_sample:
                log(f"best-of-n skips the {preset} preset: it does not sample")
                continue
            log(f"best-of-n: {passes} SFT replies to each of {len(prompts)} prompts with {preset}, scored by the proxy ...")
            picked = best_of_n(model, models.tokenizer, prompts, sampling, ns, proxy, answers_per_prompt=answers_per_prompt,
                               batch_size=batch_size, score_batch_size=score_batch_size, seed=seed,
                               after_each_sample=lambda: countdown.tick(f"best-of-n: SFT answered every prompt with {preset}"))
            for n, chosen in picked.items():
                answers[player_name(n, preset)], best_of[player_name(n, preset)] = chosen, n
    return answers, best_of


def proxy_scorer(judges: Mapping[str, Any], run_dir) -> Any:
    """The reward model best-of-n selects with: the judge PPO trains against, else stage 03's proxy loaded anew."""
    for judge in judges.values():
        if judge.trained_against:
            return judge.scorer
    from utils.pipeline.artifacts import stage_path
    from utils.reward.model import RewardScorer
    from utils.pipeline.stages import REWARD

    return RewardScorer.load(stage_path(run_dir, REWARD, "model_dir"))
