"""PPO for a language-model policy: the training loop, read top to bottom (in the spirit of CleanRL's ``ppo.py``).

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

The model is an :class:`~utils.ppo.model.ActorCritic` (policy adapter, frozen reference adapter and value head on
one base model); rollouts come from :mod:`utils.ppo.rollout`, checkpoint files from :mod:`utils.pipeline.checkpoints`,
the loss pieces (GAE, whitening, clipping, the KL controller) from :mod:`utils.ppo.losses`, the settings from
:class:`~utils.ppo.params.PPOParams`. Each update's seconds are logged by phase (generation, scoring, log-probs,
optimisation); the policy adapter can be kept at chosen updates (``snapshot_updates``) for reward against KL.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from utils.model import distributed
from utils.pipeline import checkpoints
from utils.ppo.params import PPOParams
from utils.ppo.losses import (KLController, clipped_policy_loss, clipped_value_loss, explained_variance, gae,
                              kl_penalty_rewards, masked_mean, masked_whiten, reward_mean_std,
                              rloo_advantages)
from utils.ppo.model import ActorCritic
from utils.ppo.stage import format_row
from utils.ppo.rollout import (Conversation, PromptOrder, Rollout, encode_prompts, forward_in_chunks, sample_rollout,
                               token_logprobs)

if TYPE_CHECKING:
    from utils.rl.fixed_set import FixedSetProgress

RewardFn = Callable[[list[Conversation], list[str]], Sequence[float]]
"""``reward_fn(prompts, replies) -> one score per reply``; see :func:`utils.rl.reward_functions.scorer_reward`."""


class TrainingDiverged(RuntimeError):
    """A reward, log-prob, value, loss or gradient was NaN or infinite; the run stopped before using it."""


# The sample that sets the reward normalisation draws its prompts and replies apart from the training stream.
REWARD_NORM_SEED_OFFSET = 31_337
# After a resume with several processes, each but the first reseeds its sampling generator from the update number
# (a checkpoint holds only the first process's generator); this spreads those seeds apart.
RESUME_RESEED_STRIDE = 7919


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
        config: PPOParams,
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
            raise ValueError("the tokenizer has no pad token: call utils.model.chat_format.add_special_tokens(tokenizer) first")
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
        # A checkpoint resumes only this very run: settings, prompts, the policy it starts from, the reward.
        self.fingerprint = checkpoints.run_key(config.trajectory(), self.prompt_ids, checkpoints.tensors_digest(model.adapter_state()),
                                               getattr(reward_fn, "fingerprint", None))
        if config.batch_size % distributed.world_size() or config.mini_batch_size % distributed.world_size():
            raise ValueError(f"batch_size {config.batch_size} and mini_batch_size {config.mini_batch_size} must be "
                             f"multiples of the {distributed.world_size()} processes")
        self.local_mini_batch = config.mini_batch_size // distributed.world_size()
        torch.manual_seed(config.seed + distributed.rank())  # sampling draws from the global generator
        self.shuffle = torch.Generator().manual_seed(config.seed)  # minibatch order
        self.prompt_order = PromptOrder(len(self.prompts), config.batch_size, config.seed)

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
            self.reward_norm = reward_mean_std(scores, k)
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
        model.train()  # dropout is off (utils.ppo.model.disable_dropout); train mode only enables gradient checkpointing
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
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
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
        # of the reward's variance is between prompts); progress is read on the fixed set (utils.rl.fixed_set).
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
        mean, std = reward_mean_std(torch.cat(scores), k)
        spread = f"within-prompt std {std:.4f} ({k} replies to each of {len(picked) // k} prompts)" if k > 1 else f"std {std:.4f}"
        self.log(f"reward normalisation from {len(picked)} replies of the initial policy: mean {mean:+.4f}, {spread}")
        return mean, std

    def _forward_batched(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return forward_in_chunks(self.model, rollout, self.local_mini_batch, self.config.temperature)

    def _prompt_batch(self, update: int) -> tuple[list[Conversation], list[list[int]]]:
        picked = self.prompt_order.indices(update)[distributed.rank() :: distributed.world_size()]  # this process's share
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

    def snapshots(self) -> dict[int, Path]:
        """The policy adapters kept so far: ``{update: peft folder}``."""
        return checkpoints.kept_snapshots(self.snapshot_dir, self.snapshot_updates) if self.snapshot_dir else {}

    def _maybe_snapshot(self) -> None:
        if self.update in self.snapshot_updates and distributed.rank() == 0:
            self.model.save_policy_adapter(checkpoints.snapshot_path(self.snapshot_dir, self.update))
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
            torch.manual_seed(self.config.seed + distributed.rank() + RESUME_RESEED_STRIDE * self.update)
        self.shuffle.set_state(state["shuffle_rng"].cpu())
        if self.progress is not None and state.get("progress"):
            self.progress.load_state_dict(state["progress"])

    def save_checkpoint(self) -> Path:
        """Write :meth:`state_dict` to ``checkpoint_dir`` (:func:`utils.pipeline.checkpoints.save_state`)."""
        self.last_checkpoint = checkpoints.save_state(self.checkpoint_dir, self.update, self.state_dict())
        return self.last_checkpoint

    def resume(self) -> bool:
        """Load the newest checkpoint in ``checkpoint_dir`` if this very run (its fingerprint) made it."""
        path, state = checkpoints.newest_state(self.checkpoint_dir, map_location=self.model.device) or (None, None)
        if path is None:
            return False
        if state["fingerprint"] != self.fingerprint:
            self.log(f"{path} was made by another run (another configuration, prompts, SFT adapter or reward model): "
                     "starting from scratch")
            return False
        self.load_state_dict(state)
        self.last_checkpoint = path
        self.log(f"resumed from {path} (update {self.update})")
        return True
