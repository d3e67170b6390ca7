"""Answers sampled by every player, seeded so that players share random streams, and their rewards."""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from utils.model import chat_format
from utils.model.generation import SamplingConfig, generate_replies
from utils.evaluate.sampling_reports import prompt_key
from utils.evaluate.tournament import bootstrap_mean_ci

Conversation = list[dict[str, Any]]


def as_prompt(text: str) -> Conversation:
    return [{"role": "user", "content": text}]


def word_count(text: str) -> int:
    """Reply length in words: comparable across players with different tokenizers (ours and OpenAssistant's)."""
    return len(text.split())

SAMPLE_SEED_STRIDE = 1000  # sample s of every prompt is drawn with seed + 1000 s: one stream per sample, shared by every player


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    samples: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    after_each_sample: Callable[[], None] | None = None,
) -> dict[str, list[str]]:
    """``{prompt_key(prompt): [answer per sample]}``; sample ``s`` is drawn with seed ``seed + SAMPLE_SEED_STRIDE · s``.

    A deterministic config (greedy, beams without sampling) is asked once whatever ``samples`` says.
    ``after_each_sample`` is called when every prompt has one more answer (a progress line).
    """
    n = samples if sampling.do_sample else 1
    out: dict[str, list[str]] = {prompt_key(p): [] for p in prompts}
    for s in range(n):
        replies = generate_replies(model, tokenizer, [as_prompt(p) for p in prompts], sampling, batch_size=batch_size,
                                   seed=seed + SAMPLE_SEED_STRIDE * s)
        for p, r in zip(prompts, replies):
            out[prompt_key(p)].append(r)
        if after_each_sample is not None:
            after_each_sample()
    return out


def score_answers(scorer, prompts: Mapping[str, str | Conversation], answers: Mapping[str, Sequence[str]], batch_size: int = 16) -> dict[str, list[float]]:
    """Reward of every answer: ``{key: [reward per answer]}``, the prompt (text or conversation) looked up by key."""
    flat, where = [], []
    for key, replies in answers.items():
        prompt = prompts[key]
        conv = as_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        for r in replies:
            flat.append(conv + [{"role": "assistant", "content": r}])
            where.append(key)
    rewards = scorer.score(flat, batch_size=batch_size) if flat else []
    out: dict[str, list[float]] = {key: [] for key in answers}
    for key, r in zip(where, rewards):
        out[key].append(float(r))
    return out


def per_prompt_means(scores: Mapping[str, Sequence[float]]) -> list[float]:
    """One number per prompt (the mean over its samples): the unit a bootstrap should resample."""
    return [float(np.mean(v)) for v in scores.values() if len(v)]


def summarize(
    answers: Mapping[str, Sequence[str]],
    scores: Mapping[str, Sequence[float]],
    heldout: Collection[str] = (),
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """A player's figures: mean reward with a bootstrap interval over prompts, the mean on the ``heldout``
    prompts alone (the set every player answered), mean answer length in words, and the counts."""
    mean, lo, hi = bootstrap_mean_ci(per_prompt_means(scores), rounds=rounds, seed=seed)
    on_heldout = per_prompt_means({k: v for k, v in scores.items() if k in heldout})
    words = [word_count(a) for v in answers.values() for a in v]
    return {
        "reward_mean": mean,
        "reward_ci": [lo, hi],
        "reward_mean_heldout": float(np.mean(on_heldout)) if on_heldout else float("nan"),
        "length_mean": float(np.mean(words)) if words else float("nan"),
        "prompts": len(scores),
        "answers": len(words),
    }


def fitting_prompts(convs: Sequence[Conversation], tokenizer, max_tokens: int, n: int) -> tuple[list[Conversation], int]:
    """The first ``n`` conversations whose prompt encodes in at most ``max_tokens`` tokens, and how many longer ones were passed over.

    Cutting a multi-turn prompt to fit would drop its opening turn, so a long one is passed over instead.
    """
    kept, skipped = [], 0
    for c in convs:
        if len(kept) == n:
            break
        if len(chat_format.encode_prompt(c, tokenizer)) <= max_tokens:
            kept.append(list(c))
        else:
            skipped += 1
    return kept, skipped
