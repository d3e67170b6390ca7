"""PPO for a language-model policy, in one readable file (in the spirit of CleanRL's ``ppo.py``).

One update (:meth:`PPOTrainer.step`) does, in order:

1. **rollout**: sample ``replies_per_prompt`` replies to each prompt of a batch from the current policy;
2. **score**: the reward model scores each decoded reply as a conversation (scores normalised by the mean and
   the *within-prompt* spread of the reward on a dedicated sample of the initial policy's replies, taken once);
3. **old log-probs, values and reference log-probs**, without gradient;
4. **advantages**, by one of two baselines (``baseline``):
   - ``"rloo"`` (Ahmadian et al. 2024, "Back to Basics"): each reply's KL-penalised return
     ``R = score − β·Σ_t (log π − log π_ref)_t`` minus the mean ``R`` of the *other* replies to the same prompt;
     the prompt's own difficulty cancels, no value head is needed;
   - ``"value"`` (classic RLHF PPO, Ziegler et al. 2019): per-token rewards −β·(log π − log π_ref), the score on
     the last token, **GAE** against a learned value head;
5. **advantage whitening**;
6. **PPO epochs** over shuffled minibatches: clipped policy loss (+ clipped value loss), gradient clipping;
7. **adaptive KL controller**: β moves so that the KL to the reference tracks a target.

Each implementation detail is named where it happens ("Detail: ..."). Sources: Schulman et al. 2017 (PPO),
Schulman et al. 2016 (GAE), Ziegler et al. 2019 "Fine-Tuning Language Models from Human Preferences" (the
KL-penalised reward and its adaptive controller), Ouyang et al. 2022 (InstructGPT), Huang et al. 2022
"The 37 Implementation Details of PPO" and Huang et al. 2024 "The N+ Implementation Details of RLHF with PPO".

Data parallel: under ``accelerate launch`` each process samples and trains on its share of every batch;
gradients, whitening statistics, reward normalisation and the KL fed to the controller are averaged over the
processes (:mod:`utils.distributed`), so N processes make the updates one process would with the whole batch.

The model is an :class:`~utils.ppo_model.ActorCritic` (policy adapter, frozen reference adapter and value head
on one base model); rollouts come from :mod:`utils.ppo_rollout`; checkpoints, and the fingerprint that decides
whether one may be resumed, from :mod:`utils.ppo_checkpoint`. Each update's seconds are logged by phase
(generation, scoring, log-probs, optimisation), and the policy adapter can be kept at chosen updates
(``snapshot_updates``) for measuring reward against KL along the run.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch import nn

from utils import distributed, ppo_checkpoint
from utils.notebook_params import FromParams
from utils.ppo_model import ActorCritic
from utils.ppo_rollout import Conversation, Rollout, encode_prompts, entropy_from_logits, sample_rollout, token_logprobs

if TYPE_CHECKING:
    from utils.fixed_set import FixedSetProgress

RewardFn = Callable[[list[Conversation], list[str]], Sequence[float]]
"""``reward_fn(prompts, replies) -> one score per reply``; see :func:`scorer_reward` for the reward model."""


BASELINES = ("value", "rloo")


@dataclass
class PPOConfig(FromParams):
    LIBRARY_ONLY = ("whiten_advantages",)  # on in every stage run (an ablation switch for tests and readers)

    # Rollouts
    batch_size: int = 16  # prompts per update
    replies_per_prompt: int = 1  # replies sampled per prompt: batch_size x this many per update ("rloo" needs >= 2)
    baseline: str = "value"  # "value": GAE with a learned value head; "rloo": the other replies' mean (leave-one-out)
    max_new_tokens: int = 32
    max_prompt_tokens: int = 256  # longer prompts are left out (and counted), never cut
    temperature: float = 1.0
    top_k: int = 0  # 0 and top_p 1.0: sample from π itself, so the rollout is exactly on-policy
    top_p: float = 1.0
    missing_eos_penalty: float = 0.0  # subtracted from the (normalised) score of a reply cut off by max_new_tokens
    normalize_reward: bool = True  # scores in units of the initial policy's within-prompt spread (see PPOTrainer.step)
    reward_norm_samples: int = 64  # replies of the initial policy that set that spread; 0: the first rollout batch
    # Optimisation
    mini_batch_size: int = 4
    ppo_epochs: int = 4
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    # PPO
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    whiten_advantages: bool = True
    # KL penalty
    init_kl_coef: float = 0.1
    target_kl: float | None = 6.0  # None: β stays at init_kl_coef
    kl_horizon: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "replies_per_prompt", "max_new_tokens", "max_prompt_tokens", "mini_batch_size", "ppo_epochs", "kl_horizon"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"PPOConfig.baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.baseline == "rloo" and self.replies_per_prompt < 2:
            raise ValueError(f"PPOConfig.baseline 'rloo' needs replies_per_prompt >= 2 (the others' mean is the baseline), "
                             f"got {self.replies_per_prompt}")
        if self.reward_norm_samples < 0:
            raise ValueError(f"PPOConfig.reward_norm_samples must be >= 0, got {self.reward_norm_samples!r}")
        if self.temperature <= 0:
            raise ValueError(f"PPOConfig.temperature must be > 0, got {self.temperature!r}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"PPOConfig.target_kl must be > 0 or None, got {self.target_kl!r}")



class TrainingDiverged(RuntimeError):
    """A reward, log-prob, value, loss or gradient was NaN or infinite; the run stopped before using it."""


# --------------------------------------------------------------------------------------------------------------
# The algorithm's pieces: pure functions on (batch, reply tokens) tensors, each tested on its own.
# ``mask`` is 1 on reply tokens and 0 on padding after a reply's end.
# --------------------------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the tokens of the whole batch (padding stays 0).

    Detail (data parallel): the mean and variance count every process's tokens, so each process whitens with
    the statistics of the whole batch, exactly as one process holding it all would.
    """
    count = distributed.all_sum(mask.sum()).clamp(min=1)
    mean = distributed.all_sum((x * mask).sum()) / count
    var = distributed.all_sum((((x - mean) * mask) ** 2).sum()) / count
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_penalty_rewards(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``r_t = −β·(log π − log π_ref)_t``, plus the reward model's score on each reply's last token.

    Detail (Ziegler et al. 2019): the KL penalty is paid token by token, where the policy drifts, not once per
    reply; the score arrives only at the end, since the reward model judges the whole reply. Returns the rewards
    and the per-token KL estimate ``log π − log π_ref`` (whose sum over a reply estimates KL(π‖π_ref)).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).long() - 1  # the stop token, or the last token before max_new_tokens cut the reply
    rewards[torch.arange(len(rewards), device=rewards.device), last] += scores
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the reply tokens.

    ``δ_t = r_t + γ·V(s_{t+1}) − V(s_t)`` and ``A_t = δ_t + γλ·A_{t+1}``. The state after a reply's last token is
    terminal (its value is 0): the masked values past the end make sure of that. Returns ``(advantages, returns)``
    with ``returns = advantages + values``, the value head's regression target.
    """
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
    advantages = advantages * mask
    return advantages, advantages + values


def rloo_advantages(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out advantages (Ahmadian et al. 2024; Kool et al. 2019): ``A_i = R_i − mean_{j≠i} R_j``.

    ``returns`` holds one number per reply, the replies to one prompt adjacent in groups of ``group_size``. The
    baseline is the mean of the *other* replies to the same prompt, so it is independent of reply i (the gradient
    stays unbiased) and it removes the prompt's share of the reward: an easy prompt's replies no longer all look
    good, only the better ones among them do. Within each prompt the advantages sum to zero.
    """
    grouped = returns.view(-1, group_size)
    others_mean = (grouped.sum(1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1)


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, ``−min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)`` with ``ρ = π/π_old``, averaged over tokens.

    Where the ratio has left [1−ε, 1+ε] in the direction the advantage pushes, the clipped term is the larger
    loss and constant in ρ: that token stops contributing gradient. Returns ``(loss, clip fraction, approx KL)``,
    the approximate KL(π_old‖π) being the low-variance estimator ``(ρ − 1) − log ρ`` (Schulman's "k3").
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, clip_fraction, approx_kl


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``½·max((V − R)², (V_clip − R)²)`` with ``V_clip = V_old + clip(V − V_old, ±ε)``: the value head, too, may move
    only so far from the values the advantages were computed with. Returns ``(loss, clip fraction)``."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_loss > unclipped_loss).float(), mask)
    return loss, clip_fraction


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V)/Var(R): 1 for a perfect value head, 0 for one no better than a constant (NaN if Var(R) = 0)."""
    var_returns = masked_var(returns, mask).item()
    return float("nan") if var_returns == 0 else 1.0 - masked_var(returns - values, mask).item() / var_returns


class KLController:
    """The KL coefficient β. Detail (Ziegler et al. 2019): adaptive, a proportional controller in log-space,

    ``e = clip(KL/KL_target − 1, −0.2, 0.2)``, ``β ← β·(1 + e·n/horizon)`` after an update on ``n`` replies,
    so β rises while the policy drifts further from the reference than the target, and falls otherwise.
    With ``target=None`` β is fixed.
    """

    def __init__(self, init_kl_coef: float, target: float | None, horizon: int) -> None:
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


# --------------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------------


def scorer_reward(scorer, batch_size: int = 16) -> RewardFn:
    """The reward of stage 03: each reply appended to its prompt, scored by ``utils.reward.model.RewardScorer``
    (which tokenizes with the reward model's own tokenizer).

    The function carries a ``fingerprint`` of the reward model's weights, so a PPO checkpoint made against
    another reward model is never resumed (:mod:`utils.ppo_checkpoint`).
    """

    def reward(prompts: list[Conversation], replies: list[str]) -> Sequence[float]:
        return scorer.score([[*p, {"role": "assistant", "content": r}] for p, r in zip(prompts, replies)], batch_size=batch_size)

    model = getattr(scorer, "model", None)
    if isinstance(model, nn.Module):
        reward.fingerprint = f"{ppo_checkpoint.tensors_digest(model.state_dict())}:{getattr(scorer, 'max_length', None)}"
    return reward


# Seeds derived from ``config.seed``, named so they never collide: each pass over the prompts has its own order,
# and the sample that sets the reward normalisation draws its prompts and replies apart from the training stream.
PROMPT_ORDER_SEED_STRIDE = 100_003
REWARD_NORM_SEED_OFFSET = 31_337


class PPOTrainer:
    """Trains ``model``'s policy adapter and value head with PPO on ``prompts``, scored by ``reward_fn``.

    ``history`` holds one dict of logs per update; ``samples`` a few (prompt, reply, reward) per update.
    With ``checkpoint_dir`` and ``checkpoint_every``, the state is saved every N updates (and after the last);
    :meth:`resume` continues from the newest checkpoint of this very run (same configuration, prompts, starting
    policy and reward model). ``snapshot_updates`` lists the updates after which the policy adapter is kept as a
    peft folder in ``snapshot_dir`` (0: the starting policy), for measuring reward against KL along the run.
    """

    def __init__(
        self,
        model: ActorCritic,
        tokenizer,
        prompts: Sequence[Conversation],
        reward_fn: RewardFn,
        config: PPOConfig,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 0,
        samples_per_update: int = 3,
        log: Callable[[str], None] | None = print,
        snapshot_updates: Sequence[int] = (),
        snapshot_dir: str | Path | None = None,
        progress: FixedSetProgress | None = None,
    ) -> None:
        self.model, self.tokenizer, self.reward_fn, self.config = model, tokenizer, reward_fn, config
        self.prompts, self.prompt_ids, self.prompts_too_long = encode_prompts(prompts, tokenizer, config.max_prompt_tokens)
        if not self.prompts:
            raise ValueError(f"none of the {len(prompts)} prompts fits in max_prompt_tokens={config.max_prompt_tokens}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token: call utils.chat_format.add_special_tokens(tokenizer) first")
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.checkpoint_every = checkpoint_every
        self.snapshot_updates = sorted(set(int(u) for u in snapshot_updates))
        if self.snapshot_updates and snapshot_dir is None:
            raise ValueError("snapshot_updates needs a snapshot_dir")
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self.samples_per_update = samples_per_update
        self.progress = progress  # measured at every snapshot: the fixed held-out prompts, k replies each
        self.log = log or (lambda _: None)
        self.params = model.trainable_parameters()
        # Detail: Adam's epsilon 1e-5 rather than 1e-8 (the value of OpenAI's baselines; Huang et al. 2022, detail 3).
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, eps=1e-5, weight_decay=0.0)
        self.kl_ctl = KLController(config.init_kl_coef, config.target_kl, config.kl_horizon)
        self.reward_norm: tuple[float, float] | None = None  # (mean, std) of the initial policy's scores
        self.update = 0
        self.history: list[dict[str, float]] = []
        self.samples: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None
        self.fingerprint = ppo_checkpoint.run_fingerprint(
            config, self.prompt_ids, ppo_checkpoint.tensors_digest(model.adapter_state()), getattr(reward_fn, "fingerprint", None)
        )
        if config.batch_size % distributed.world_size() or config.mini_batch_size % distributed.world_size():
            raise ValueError(f"batch_size {config.batch_size} and mini_batch_size {config.mini_batch_size} must be "
                             f"multiples of the {distributed.world_size()} processes")
        self.local_mini_batch = config.mini_batch_size // distributed.world_size()
        torch.manual_seed(config.seed + distributed.rank())  # sampling draws from the global generator
        self.shuffle = torch.Generator().manual_seed(config.seed)  # minibatch order
        self._epoch_orders: dict[int, torch.Tensor] = {}

    # ---- one update ------------------------------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        """One PPO update; appends to ``history`` and ``samples`` and returns the update's logs."""
        cfg, model = self.config, self.model
        update = self.update + 1
        started = time.perf_counter()
        seconds: dict[str, float] = defaultdict(float)  # this update's time by phase
        # Detail (Ziegler et al. 2019): reward normalisation. Before the first update, the reward model scores a
        # dedicated sample of the initial (SFT) policy's replies; their mean and standard deviation shift and scale
        # every later score, and stay fixed: β, the missing-EOS penalty and the value head then work in "SFT-reply
        # standard deviations", whatever scale the reward model happens to have.
        if cfg.normalize_reward and self.reward_norm is None and cfg.reward_norm_samples > 0:
            t0 = time.perf_counter()
            self.reward_norm = self._reward_norm_from_sample(cfg.reward_norm_samples)
            seconds["reward_norm"] += time.perf_counter() - t0
        prompts, prompt_ids = self._prompt_batch(update)
        # Detail (RLOO, GRPO): k replies to every prompt, adjacent in the batch, so that replies can be compared
        # with the other replies to the same prompt.
        k = cfg.replies_per_prompt
        prompts, prompt_ids = [p for p in prompts for _ in range(k)], [ids for ids in prompt_ids for _ in range(k)]

        # 1. Rollout. Detail: eval mode while sampling, so the KV cache is used even with gradient checkpointing on.
        t0 = time.perf_counter()
        model.eval()
        rollout = sample_rollout(model, self.tokenizer, prompts, prompt_ids, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
        mask = rollout.response_mask.float()
        seconds["generate"] += time.perf_counter() - t0

        # 2. Score each decoded reply with the reward model (or any reward function).
        t0 = time.perf_counter()
        scores = self._score(rollout.prompts, rollout.replies, update)
        seconds["score"] += time.perf_counter() - t0
        if cfg.normalize_reward and self.reward_norm is None:  # reward_norm_samples=0: the first batch sets the scale
            self.reward_norm = self._mean_std(scores, k)
        shift, scale = self.reward_norm if cfg.normalize_reward else (0.0, 1.0)
        # Detail: a reply that hit max_new_tokens without a stop token may lose a fixed penalty (Ziegler et al. 2019
        # gave such continuations a reward of −1). Off by default: in units of the within-prompt spread, a penalty of
        # 1 outweighs everything else a reply can gain, and where the reward model favours length the policy then
        # learns to stop early rather than to answer better (measured on tiny: replies 41 -> 25 tokens, proxy down).
        # The cut is still the episode's end (no bootstrapping from V): the reward model judged that reply, not a longer one.
        train_scores = (scores - shift) / scale - cfg.missing_eos_penalty * (~rollout.ended).float()

        # 3. Old log-probs and values from the policy, reference log-probs from π_ref: no gradient.
        t0 = time.perf_counter()
        with torch.no_grad():
            old_logprobs, old_values, entropy = self._forward_batched(rollout)
            with model.as_reference():
                ref_logprobs, _, _ = self._forward_batched(rollout)
        self._check_finite(update, "the policy's log-probs", old_logprobs, mask)
        self._check_finite(update, "the reference's log-probs", ref_logprobs, mask)
        self._check_finite(update, "the values", old_values, mask)
        seconds["logprobs"] += time.perf_counter() - t0

        # 4. Per-token reward: KL penalty on every token, the score on the last.
        kl_coef = self.kl_ctl.value
        rewards, kl = kl_penalty_rewards(old_logprobs, ref_logprobs, train_scores, mask, kl_coef)
        if cfg.baseline == "rloo":
            # 5a. RLOO: one return per reply, the score minus β·(the reply's summed KL), i.e. the per-token rewards
            # summed; its advantage is that return minus the mean return of the other replies to the same prompt,
            # credited to every token of the reply (REINFORCE with a leave-one-out baseline, no value head).
            returns = rewards.sum(1)
            sequence_advantages = rloo_advantages(returns, k)
            # 6a. Detail: scaled by the batch's spread of advantages, not shifted (the leave-one-out mean is already 0).
            if cfg.whiten_advantages:
                sequence_advantages = sequence_advantages * torch.rsqrt(distributed.all_mean((sequence_advantages**2).mean()) + 1e-8)
            advantages = sequence_advantages[:, None] * mask
            returns = returns[:, None] * mask  # logged only: there is no value head to train
        else:
            # 5b. GAE over the reply tokens, against the value head.
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            # 6b. Detail: advantages whitened over the batch's tokens (returns are not: the value head regresses on them).
            if cfg.whiten_advantages:
                advantages = masked_whiten(advantages, mask)

        # 7. PPO epochs: each epoch a fresh shuffle of the batch into minibatches.
        t0 = time.perf_counter()
        model.train()  # dropout is off (ppo_model.disable_dropout); train mode only enables gradient checkpointing
        stats: dict[str, list[float]] = defaultdict(list)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(prompts), generator=self.shuffle).to(model.device)
            for first in range(0, len(prompts), self.local_mini_batch):
                mb = order[first : first + self.local_mini_batch]
                logits, values = model(rollout.input_ids[mb, :-1], rollout.attention_mask[mb, :-1], mask.shape[1])
                logprobs = token_logprobs(logits, rollout.response_ids[mb], cfg.temperature)
                pg_loss, clip_fraction, approx_kl = clipped_policy_loss(logprobs, old_logprobs[mb], advantages[mb], mask[mb], cfg.clip_range)
                if cfg.baseline == "value":
                    vf_loss, vf_clip_fraction = clipped_value_loss(values, old_values[mb], returns[mb], mask[mb], cfg.clip_range_value)
                    loss = pg_loss + cfg.vf_coef * vf_loss
                else:  # RLOO: the policy loss alone; the value head is not used (its numbers are logged as NaN)
                    vf_loss = vf_clip_fraction = torch.tensor(float("nan"))
                    loss = pg_loss
                self._check_finite(update, "the loss", loss)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # Detail (data parallel): gradients averaged over the processes before clipping, as DDP would.
                distributed.average_gradients(self.params)
                # Detail: global gradient-norm clipping; a non-finite norm stops the run before the step spoils the weights.
                grad_norm = nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self._check_finite(update, "the gradient norm", grad_norm)
                self.optimizer.step()
                for name, value in [("policy_loss", pg_loss), ("value_loss", vf_loss), ("clip_fraction", clip_fraction),
                                    ("approx_kl", approx_kl), ("value_clip_fraction", vf_clip_fraction), ("grad_norm", grad_norm)]:
                    stats[name].append(value.item())
        seconds["optimise"] += time.perf_counter() - t0

        # 8. Adaptive KL controller, fed this batch's mean KL(π‖π_ref) per reply.
        mean_kl = distributed.all_mean(kl.sum(1).mean()).item()
        self.kl_ctl.update(mean_kl, n_steps=len(prompts) * distributed.world_size())

        self.update = update
        # Training logs: this batch's prompts are new every update, so its mean moves with the prompts drawn (most
        # of the reward's variance is between prompts); progress is read on the fixed set (utils.fixed_set).
        row = {
            "update": update,
            "reward_mean": distributed.all_mean(scores.mean()).item(),
            "reward_std": scores.std(unbiased=False).item(),
            "kl": mean_kl,
            "kl_coef": kl_coef,
            "objective": (train_scores - kl_coef * kl.sum(1)).mean().item(),  # in normalised units
            "entropy": masked_mean(entropy, mask).item(),
            "explained_variance": explained_variance(old_values, returns, mask) if cfg.baseline == "value" else float("nan"),
            "response_length": rollout.response_lengths.float().mean().item(),
            "ended_fraction": rollout.ended.float().mean().item(),
            "capped_fraction": 1.0 - rollout.ended.float().mean().item(),
            **{name: sum(v) / len(v) for name, v in stats.items()},
            **{f"seconds_{phase}": s for phase, s in seconds.items()},
            "seconds": time.perf_counter() - started,
        }
        self.history.append(row)
        self.samples += [
            {"update": update, "prompt": p[-1]["content"], "reply": r, "reward": s}
            for p, r, s in list(zip(rollout.prompts, rollout.replies, scores.tolist()))[: self.samples_per_update]
        ]
        return row

    def _score(self, prompts: list[Conversation], replies: list[str], update: int) -> torch.Tensor:
        scores = torch.as_tensor([float(s) for s in self.reward_fn(prompts, replies)], dtype=torch.float32)
        if scores.shape != (len(prompts),):
            raise ValueError(f"reward_fn returned {scores.numel()} scores for {len(prompts)} replies")
        self._check_finite(update, "the reward", scores)
        return scores.to(self.model.device)

    @staticmethod
    def _mean_std(scores: torch.Tensor, group_size: int = 1) -> tuple[float, float]:
        """Mean and spread over every process's scores (equal shares); a constant reward keeps scale 1.

        With several replies per prompt (adjacent groups of ``group_size``) the spread is the *within-prompt*
        standard deviation: the differences RL can act on, without the prompt-to-prompt spread it cannot change.
        """
        mean = distributed.all_mean(scores.mean())
        if group_size > 1:
            grouped = scores.view(-1, group_size)
            var = distributed.all_mean(((grouped - grouped.mean(1, keepdim=True)) ** 2).sum(1).mean() / (group_size - 1))
        else:
            var = distributed.all_mean(((scores - mean) ** 2).mean())
        std = var.sqrt().item()
        return mean.item(), std if std > 1e-8 else 1.0

    def _reward_norm_from_sample(self, n: int) -> tuple[float, float]:
        """Mean and spread of the reward on ``n`` replies of the current (initial) policy to seeded random prompts.

        Drawn inside a forked random state, so the training run that follows samples exactly what it would have
        sampled without this step; each process draws its share.
        """
        cfg = self.config
        k = cfg.replies_per_prompt
        order = torch.randperm(len(self.prompts), generator=torch.Generator().manual_seed(cfg.seed + REWARD_NORM_SEED_OFFSET))
        n_prompts = max(1, n // k) if k > 1 else n  # k replies to each: the within-prompt spread needs groups
        picked = [int(order[i % len(order)]) for i in range(n_prompts)][distributed.rank() :: distributed.world_size()]
        picked = [i for i in picked for _ in range(k)]
        devices = [self.model.device] if self.model.device.type == "cuda" else []
        scores = []
        self.model.eval()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed + REWARD_NORM_SEED_OFFSET + distributed.rank())
            step = max(1, cfg.batch_size // distributed.world_size()) * k
            for first in range(0, len(picked), step):
                rows = picked[first : first + step]
                prompts, ids = [self.prompts[i] for i in rows], [self.prompt_ids[i] for i in rows]
                rollout = sample_rollout(self.model, self.tokenizer, prompts, ids, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
                scores.append(self._score(rollout.prompts, rollout.replies, 1))
        mean, std = self._mean_std(torch.cat(scores), k)
        spread = f"within-prompt std {std:.4f} ({k} replies to each of {len(picked) // k} prompts)" if k > 1 else f"std {std:.4f}"
        self.log(f"reward normalisation from {len(picked)} replies of the initial policy: mean {mean:+.4f}, {spread}")
        return mean, std

    def _forward_batched(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probs, values and entropies of the rollout's reply tokens, a minibatch at a time (memory).

        Detail (speed): a rollout is laid out for the longest prompt and the longest reply of the whole batch, so
        much of it is padding. Rows go through the model in chunks of similar length (sorted by their number of
        tokens), each chunk cut to the columns where it has tokens (:meth:`Rollout.model_inputs`): every reply
        token gets what the full layout gives; positions after a reply's end that a chunk no longer reaches read
        0 (masked out everywhere they are used).
        """
        n, width = rollout.response_mask.shape
        logprobs, values, entropy = (torch.zeros(n, width, device=rollout.input_ids.device) for _ in range(3))
        order = torch.argsort(rollout.attention_mask.sum(1), stable=True)
        for first in range(0, n, self.local_mini_batch):
            rows = order[first : first + self.local_mini_batch]
            input_ids, attention_mask, replied = rollout.model_inputs(rows)
            logits, chunk_values = self.model(input_ids, attention_mask, replied)
            logprobs[rows, :replied] = token_logprobs(logits, rollout.response_ids[rows, :replied], self.config.temperature)
            values[rows, :replied] = chunk_values
            entropy[rows, :replied] = entropy_from_logits(logits, self.config.temperature)
        return logprobs, values, entropy

    def _prompt_batch(self, update: int) -> tuple[list[Conversation], list[list[int]]]:
        """The prompts of an update: passes over the prompt set, each in its own seeded order.

        A function of the update number alone, so a resumed run sees the prompts the uninterrupted one would have."""
        n, size = len(self.prompts), self.config.batch_size
        picked = []
        for k in range((update - 1) * size, update * size):
            epoch, position = divmod(k, n)
            if epoch not in self._epoch_orders:
                seed = self.config.seed * PROMPT_ORDER_SEED_STRIDE + epoch
                self._epoch_orders[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            picked.append(int(self._epoch_orders[epoch][position]))
        picked = picked[distributed.rank() :: distributed.world_size()]  # this process's share of the batch
        return [self.prompts[i] for i in picked], [self.prompt_ids[i] for i in picked]

    def _check_finite(self, update: int, what: str, x: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Detail: NaN or inf stops the run at once, naming the update; the last good checkpoint stays as it was."""
        values = x if mask is None else x[mask.bool()]
        if torch.isfinite(values).all():
            return
        bad = int((~torch.isfinite(values)).sum())
        where = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written yet"
        raise TrainingDiverged(f"PPO stopped at update {update}: {what} has {bad} NaN/inf value(s) of {values.numel()}; {where}")

    # ---- the loop, snapshots and checkpoints -----------------------------------------------------------------

    def train(self, updates: int) -> list[dict[str, float]]:
        """Run PPO until ``updates`` updates are done (those restored by :meth:`resume` count)."""
        if self.update == 0:  # a fresh run: snapshots of an earlier run in the same folder are not this run's
            if self.snapshot_dir is not None and distributed.rank() == 0:
                shutil.rmtree(self.snapshot_dir, ignore_errors=True)
            self._maybe_snapshot()
        while self.update < updates:
            row = self.step()
            self.log(format_row(row))
            self._maybe_snapshot()
            if self.checkpoint_dir and self.checkpoint_every and (self.update % self.checkpoint_every == 0 or self.update == updates):
                self.save_checkpoint()
        return self.history

    def snapshot_path(self, update: int) -> Path:
        assert self.snapshot_dir is not None, "PPOTrainer has no snapshot_dir"
        return self.snapshot_dir / f"update-{update:06d}"

    def snapshots(self) -> dict[int, Path]:
        """The policy adapters kept so far: ``{update: peft folder}``."""
        return {u: self.snapshot_path(u) for u in self.snapshot_updates if self.snapshot_dir and self.snapshot_path(u).exists()}

    def export_snapshots(self, dest: str | Path) -> dict[int, Path]:
        """Copy the kept policy adapters into ``dest`` (the stage's folder): ``{update: folder}``."""
        dest = Path(dest)
        out = {}
        for update, path in self.snapshots().items():
            target = dest / path.name
            if target.resolve() != path.resolve():
                shutil.copytree(path, target, dirs_exist_ok=True)
            out[update] = target
        return out

    def _maybe_snapshot(self) -> None:
        if self.update in self.snapshot_updates and distributed.rank() == 0:
            self.model.save_policy_adapter(self.snapshot_path(self.update))
            if self.progress is not None:
                self.model.eval()  # sampling with the KV cache; step() switches back to train mode
                self.progress.measure(self.update, self.model.policy_model, self.model.reference_model)

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly where this one is: the policy and value adapters, the
        optimizer, β, the reward normalisation, the logs, every random generator, the fixed set's measurements."""
        return {
            "fingerprint": self.fingerprint,
            "update": self.update,
            "model": self.model.adapter_state(),
            "optimizer": self.optimizer.state_dict(),
            "kl_coef": self.kl_ctl.value,
            "reward_norm": list(self.reward_norm) if self.reward_norm else [],
            "history": self.history,
            "samples": self.samples,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle_rng": self.shuffle.get_state(),
            "progress": self.progress.state_dict() if self.progress is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s ``state`` (the caller checked its fingerprint)."""
        self.model.load_adapter_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_ctl.value = state["kl_coef"]
        self.reward_norm = tuple(state["reward_norm"]) if state["reward_norm"] else None
        self.update, self.history, self.samples = state["update"], state["history"], state["samples"]
        torch.set_rng_state(state["rng"].cpu())
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if distributed.world_size() > 1:  # the state holds the first process's generator: the others draw anew
            torch.manual_seed(self.config.seed + distributed.rank() + ppo_checkpoint.RESUME_RESEED_STRIDE * self.update)
        self.shuffle.set_state(state["shuffle_rng"].cpu())
        if self.progress is not None and state.get("progress"):
            self.progress.load_state_dict(state["progress"])

    def save_checkpoint(self) -> Path:
        """Write the full training state (see :mod:`utils.ppo_checkpoint`); one good checkpoint always exists."""
        return ppo_checkpoint.save_checkpoint(self)

    def resume(self) -> bool:
        """Load the newest checkpoint in ``checkpoint_dir`` if this very run (its fingerprint) made it."""
        return ppo_checkpoint.resume(self)


def snapshot_schedule(updates: int, points: int) -> list[int]:
    """``points`` updates spread evenly over a run of ``updates``, the start (0) and the end included."""
    if points < 2:
        raise ValueError(f"a reward-against-KL curve needs at least 2 points (the start and the end), got {points}")
    return sorted({round(i * updates / (points - 1)) for i in range(points)})


def stage_metrics(
    trainer: PPOTrainer,
    out_dir: str | Path,
    *,
    adapter_dir: str | Path,
    snapshots: dict[int, Path],
    reward_source: Mapping[str, str],
    data_skipped: Mapping[str, int] | None = None,
    peak_memory_mb: float | None = None,
    processes: int = 1,
    policy_checksums: Sequence[float] | None = None,
) -> dict[str, Any]:
    """What stage 04 records, the same whether a notebook or a script ran it."""
    from utils.artifacts import record_path

    return {
        **summary_metrics(trainer.history),
        "reward_means": [row["reward_mean"] for row in trainer.history],  # training log: each update's new prompts
        "kl_per_update": [row["kl"] for row in trainer.history],
        "kl_coef_per_update": [row["kl_coef"] for row in trainer.history],
        "target_kl": trainer.config.target_kl,
        "reward_norm": list(trainer.reward_norm) if trainer.reward_norm else None,
        "prompts": len(trainer.prompts),
        "prompts_too_long": trainer.prompts_too_long,
        "data_skipped": dict(data_skipped or {}),  # records the readers skipped (on_error: skip), by reason
        "adapter_dir": record_path(out_dir, adapter_dir),
        "snapshots": {update: record_path(out_dir, path) for update, path in snapshots.items()},
        **reward_source,  # reward_model_dir (stage 03's proxy) or reward_function ("module:function")
        "peak_memory_mb": peak_memory_mb,
        "processes": processes,
        "policy_checksums": list(policy_checksums) if policy_checksums is not None else None,
        # Progress on the fixed held-out prompts (utils.fixed_set): gains paired by prompt against update 0 (SFT).
        "progress": trainer.progress.points if trainer.progress is not None else [],
        "fixed_set": trainer.progress.save(out_dir).name if trainer.progress is not None and trainer.progress.samples else None,
        "baseline": trainer.config.baseline,
        "replies_per_prompt": trainer.config.replies_per_prompt,
        "ended_fraction_first": trainer.history[0]["ended_fraction"],
        "ended_fraction_last": trainer.history[-1]["ended_fraction"],
    }


def progress_rows(points: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The fixed set's points as table rows: gains ± one standard error over prompts."""
    def pm(mean: float | None, se: float | None) -> str:
        return "" if mean is None else f"{mean:+.3f} ± {se:.3f}" if se == se else f"{mean:+.3f}"
    return [{"update": str(p["update"]), "KL to SFT": f"{p['kl']:.2f} ± {p['kl_se']:.2f}",
             "proxy gain": pm(p.get("proxy_gain"), p.get("proxy_gain_se")), "judge gain": pm(p.get("judge_gain"), p.get("judge_gain_se")),
             "words": f"{p['words']:.0f}", "ended": f"{p['ended_fraction']:.2f}", "capped": f"{p['capped_fraction']:.2f}"}
            for p in points]


def format_row(row: dict[str, float]) -> str:
    return (
        f"update {row['update']:>4}  batch reward {row['reward_mean']:+.3f} ± {row['reward_std']:.3f}  kl {row['kl']:.3f} "
        f"(β {row['kl_coef']:.3f})  entropy {row['entropy']:.2f}  clip {row['clip_fraction']:.2f}  "
        f"value loss {row['value_loss']:.3f}  expl var {row['explained_variance']:+.2f}  "
        f"length {row['response_length']:.1f}  ended {row['ended_fraction']:.2f}  {row['seconds']:.1f}s"
    )


def summary_metrics(history: Sequence[dict[str, float]]) -> dict[str, float]:
    """The stage's headline figures from the per-update logs."""
    if not history:
        raise ValueError("no PPO update was run")
    phases = sorted({k for row in history for k in row if k.startswith("seconds_")})
    return {
        "reward_mean_first": history[0]["reward_mean"],
        "reward_mean_last": history[-1]["reward_mean"],
        "kl_last": history[-1]["kl"],
        "kl_coef_first": history[0]["kl_coef"],
        "kl_coef_last": history[-1]["kl_coef"],
        "updates": len(history),
        "seconds_per_update": sum(r["seconds"] for r in history) / len(history),
        # Where an update's time goes: generation, scoring, log-probs, optimisation (reward_norm: once, before update 1).
        "seconds_by_phase": {k.removeprefix("seconds_"): sum(r.get(k, 0.0) for r in history) / len(history) for k in phases},
    }

