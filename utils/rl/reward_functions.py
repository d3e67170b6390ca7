"""Your own reward, for teaching: a Python function named ``module:function`` instead of the reward model.

A reward function scores replies::

    def my_reward(prompts: list[list[dict]], replies: list[str]) -> list[float]: ...

``prompts[i]`` is the conversation (``[{"role": ..., "content": ...}, ...]``) that ``replies[i]`` answers; the
function returns one finite number per reply, higher is better. Stages 04_ppo and 04_rloo take one through their
``reward_function`` parameter (e.g. ``"utils.rl.example_rewards:count_the"``); ``None`` keeps stage 03's reward model.

Before any training, :func:`load_reward_function` imports it and :func:`check_reward_function` calls it once on a
few real prompts: a function that does not import, is not callable, raises, or returns the wrong number of
scores (or a NaN) stops the stage there, in one line that names it.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

Conversation = list[dict[str, Any]]
RewardFunction = Callable[[list[Conversation], list[str]], Sequence[float]]


class RewardFunctionError(ValueError):
    """A reward function named by a stage parameter cannot be used; the message is one line."""


def load_reward_function(spec: str) -> RewardFunction:
    """Import ``"package.module:function"`` and return the function (a one-line error otherwise)."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise RewardFunctionError(f"reward_function {spec!r}: expected 'module:function', e.g. 'utils.rl.example_rewards:count_the'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an import error, or any error the module raises while importing
        raise RewardFunctionError(f"reward_function {spec!r}: module {module_name!r} does not import ({type(e).__name__}: {e})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise RewardFunctionError(f"reward_function {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise RewardFunctionError(f"reward_function {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")

    def reward(prompts: list[Conversation], replies: list[str]) -> Sequence[float]:
        return fn(prompts, replies)

    reward.fingerprint = f"function:{spec}"  # a PPO checkpoint made against another reward is never resumed
    reward.spec = spec
    return reward


def checked_scores(fn: RewardFunction, prompts: Sequence[Conversation], replies: Sequence[str], name: str = "reward function") -> list[float]:
    """``fn``'s scores of ``replies`` to ``prompts``, or a one-line :class:`RewardFunctionError` unless it returned
    one finite number per reply (used on the test replies before training, and on every batch by 04_rloo)."""
    try:
        scores = fn(list(prompts), list(replies))
    except Exception as e:
        raise RewardFunctionError(f"{name}: raised {type(e).__name__} on {len(replies)} replies: {e}") from None
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError) as e:
        raise RewardFunctionError(f"{name}: must return a sequence of numbers, one per reply; got {type(scores).__name__} ({e})") from None
    if len(values) != len(replies):
        raise RewardFunctionError(f"{name}: returned {len(values)} scores for {len(replies)} replies (one per reply expected)")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise RewardFunctionError(f"{name}: returned {len(bad)} non-finite score(s) (e.g. {bad[0]}) for {len(replies)} replies")
    return values


def check_reward_function(fn: RewardFunction, prompts: Sequence[Conversation], replies: Sequence[str], name: str = "reward function") -> None:
    """Call ``fn`` once on ``replies`` to ``prompts``: it must return one finite number per reply."""
    checked_scores(fn, prompts, replies, name)


def reward_function_or_none(spec: str | None, prompts: Sequence[Conversation]) -> RewardFunction | None:
    """The stage parameter ``reward_function``: ``None`` (use the reward model) or a loaded and checked function.

    The check replies to the first few ``prompts`` with two fixed texts, one empty: a function must cope with both.
    """
    if spec is None:
        return None
    fn = load_reward_function(spec)
    sample = list(prompts[:2]) or [[{"role": "user", "content": "Hello"}]]
    probe_prompts = [p for p in sample for _ in range(2)]
    probe_replies = ["The answer is that the sky is blue.", ""] * len(sample)
    check_reward_function(fn, probe_prompts, probe_replies, name=f"reward_function {spec!r}")
    return fn


def stage_reward(run_dir, reward_function: str | None, prompts: Sequence[Conversation], batch_size: int = 16,
                 device=None) -> tuple[RewardFunction, dict[str, str]]:
    """An RL stage's reward: ``(reward(prompts, replies), what it is, for metrics.json)``.

    Stage 03's proxy reward model by default, or the Python function ``reward_function`` names (imported and
    tried on test replies first: a bad one stops here, in one line).
    """
    fn = reward_function_or_none(reward_function, prompts)
    if fn is not None:
        return fn, {"reward_function": reward_function}
    from utils.pipeline.artifacts import stage_path
    from utils.reward.model import RewardScorer
    from utils.pipeline.stages import REWARD

    model_dir = stage_path(run_dir, REWARD, "model_dir")
    return scorer_reward(RewardScorer.load(model_dir, device=device), batch_size=batch_size), {"reward_model_dir": str(model_dir.resolve())}


def scorer_reward(scorer, batch_size: int = 16) -> RewardFunction:
    """The reward of stage 03: each reply appended to its prompt, scored by ``utils.reward.model.RewardScorer``
    (which tokenizes with the reward model's own tokenizer).

    The function carries a ``fingerprint`` of the reward model's weights, so a PPO checkpoint made against
    another reward model is never resumed (:mod:`utils.pipeline.checkpoints`).
    """

    def reward(prompts: list, replies: list[str]) -> Sequence[float]:
        return scorer.score([[*p, {"role": "assistant", "content": r}] for p, r in zip(prompts, replies)], batch_size=batch_size)

    from torch import nn

    from utils.pipeline.checkpoints import tensors_digest

    model = getattr(scorer, "model", None)
    if isinstance(model, nn.Module):
        reward.fingerprint = f"{tensors_digest(model.state_dict())}:{getattr(scorer, 'max_length', None)}"
    return reward
