"""Stage 04_rloo's parameters, each default written here once (the notebook's parameters cell is generated from this)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from utils.params import DataParams, ParameterError, param


@dataclass
class RLOOParams(DataParams):
    """trl's RLOOTrainer on the SFT policy against stage 03's proxy (or a Python reward), the reward KL-penalised."""

    algorithm: Literal["rloo", "grpo"] = param(
        "rloo", '"rloo": trl\'s RLOOTrainer; "grpo": trl\'s GRPOTrainer (the group\'s mean and spread, KL in the loss)')
    quantization: Literal["nf4", "none"] | None = param(None, 'None: as stage 02 trained (its metrics say); or "nf4" / "none"')
    gradient_checkpointing: bool = param(False, "trade compute for activation memory (GPU profiles)")
    updates: int = param(12, "updates, each on freshly sampled replies: 10 to 11 s each on 2 cores for tiny (AVX2 host)")
    prompts_per_update: int = param(4, "prompts sampled per update")
    replies_per_prompt: int = param(
        4, "k, at least 2: the baseline of each reply is the mean reward of the other k - 1 to its prompt")
    mini_batch_size: int | None = param(
        None, "replies per forward/backward pass, for memory: a divisor of a step's (None: a step's replies at once)")
    steps_per_update: int = param(
        4, "optimizer steps per update, its replies split into this many mini-batches as PPO's (1: the paper's plain "
           "REINFORCE); tiny at β 0.05, means of 3 seeds: 4 at 5e-4 proxy +0.064 at KL 0.91, 1 at 2e-3 +0.072 at 2.67")
    max_new_tokens: int = param(
        96, "as 04_ppo: 61% of SFT replies end within 96 tokens on tiny; stage 05 pairs their fixed sets")
    max_prompt_tokens: int = param(256, "longer prompts are skipped (and counted), never cut")
    learning_rate: float = param(
        5e-4, "tiny at β 0.05, 4 steps an update, seeds 0-2: KL 0.69-1.08, proxy +0.057 to +0.072; at 1e-3 KL 1.3-2.0, +0.036 to "
              "+0.079 (benchmarks/results/rl-sweep-tiny.md)")
    beta: float = param(
        0.02, "the KL coefficient: a reply's reward loses beta x its log-ratio to SFT; tiny, seeds 0-2: proxy +0.073 at "
              "1.57 nats, at trl's 0.05 +0.064 at 0.91 (benchmarks/results/rl-sweep-tiny.md)")
    max_grad_norm: float = param(1.0, "gradients clipped to this norm")
    reward_function: str | None = param(
        None, 'None: the proxy reward model of stage 03; or "module:function", e.g. "utils.rl.example_rewards:count_the"')
    reward_batch_size: int = param(16, "replies per reward-model forward pass")
    save_steps: int = param(0, "> 0: a checkpoint every save_steps updates in <run_dir>/checkpoints/04_rloo; a killed run resumes")
    n_compare_prompts: int = param(4, "held-out prompts answered by SFT and by RLOO")
    kl_curve_points: int = param(
        4, "the policy is kept at this many updates, 0 and the last included (the reward-vs-KL curve of stage 05)")
    n_fixed_prompts: int = param(24, "held-out prompts answered at every snapshot: progress is read there (0: none)")
    fixed_replies_per_prompt: int = param(4, "replies to each of them per snapshot")
    fixed_batch_size: int = param(32, "replies sampled at once on the fixed set")

    def __post_init__(self) -> None:
        if self.algorithm not in ("rloo", "grpo"):
            raise ParameterError(f"04_rloo: algorithm must be 'rloo' or 'grpo', got {self.algorithm!r}")
        for name in ("updates", "prompts_per_update", "max_new_tokens", "max_prompt_tokens"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"04_rloo: {name} must be >= 1, got {getattr(self, name)!r}")
        if self.replies_per_prompt < 2:
            raise ParameterError(f"04_rloo: replies_per_prompt must be >= 2 (the leave-one-out baseline needs another reply), "
                                 f"got {self.replies_per_prompt!r}")
        if self.mini_batch_size is not None and (self.mini_batch_size < 1 or self.replies_per_update % self.mini_batch_size):
            raise ParameterError(f"04_rloo: mini_batch_size must divide the {self.replies_per_update} replies of an update, "
                                 f"got {self.mini_batch_size!r}")
        if self.mini_batch_size is None:
            if self.steps_per_update < 1 or self.replies_per_update % self.steps_per_update:
                raise ParameterError(f"04_rloo: steps_per_update must divide the {self.replies_per_update} replies of an "
                                     f"update, got {self.steps_per_update!r}")
        else:
            micro_batches = self.replies_per_update // self.mini_batch_size
            if self.steps_per_update < 1 or micro_batches % self.steps_per_update:
                raise ParameterError(f"04_rloo: steps_per_update must divide the {micro_batches} micro-batches of an update "
                                     f"({self.replies_per_update} replies in micro-batches of {self.mini_batch_size}), "
                                     f"got {self.steps_per_update!r}")

    @property
    def replies_per_update(self) -> int:
        return self.prompts_per_update * self.replies_per_prompt

    def training(self) -> dict[str, Any]:
        """What decides the run's updates, which a checkpoint must match to be resumed: all but how often it
        checkpoints and what is shown or measured on the side (the snapshot schedule and the reward are keyed apart)."""
        return {k: v for k, v in asdict(self).items() if k not in ("save_steps", "n_compare_prompts", "reward_batch_size")}
