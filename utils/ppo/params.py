"""Stage 04_ppo's parameters, each default written here once (the notebook's parameters cell is generated from this,
and :class:`~utils.ppo.trainer.PPOTrainer` reads its settings from an instance)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from utils.params import DataParams, ParameterError, param


@dataclass
class PPOParams(DataParams):
    """RLHF with the kit's PPO: the SFT policy against stage 03's proxy (or a Python reward), a KL penalty to SFT."""

    quantization: Literal["nf4", "none"] | None = param(None, 'None: as stage 02 trained (its metrics say); or "nf4" / "none"')
    gradient_checkpointing: bool = param(False, "trade compute for activation memory (GPU profiles)")
    reward_function: str | None = param(
        None, 'None: stage 03\'s reward model (the proxy); or "module:function", e.g. "utils.rl.example_rewards:count_the"')
    # Rollouts
    updates: int = param(12, "PPO updates, one rollout batch each")
    batch_size: int = param(4, "prompts per update")
    replies_per_prompt: int = param(4, "replies sampled per prompt: batch_size x this many replies per update")
    baseline: Literal["value", "rloo"] = param(
        "value", '"value": GAE with a learned value head; "rloo": the other replies\' mean reward (leave-one-out)')
    mini_batch_size: int = param(8, "replies per optimiser step")
    ppo_epochs: int = param(2, "passes over each rollout batch")
    learning_rate: float = param(
        3e-4, "tiny, 12 updates, 2 seeds: KL 1.1-1.2 nats, proxy +0.06-0.07; 1e-3 overshot to KL 8.6 (benchmarks/results/rl-sweep-tiny.md)")
    max_new_tokens: int = param(96, "61% of SFT replies end within 96 tokens on tiny (34% within 48; measured on the fixed set)")
    max_prompt_tokens: int = param(256, "longer prompts are skipped (and counted), never cut: 128 skipped 413 of 680")
    temperature: float = param(1.0, "rollouts sample from π itself: top_k 0 and top_p 1.0 switch those filters off")
    top_k: int = param(0, "0: no top-k filter")
    top_p: float = param(1.0, "1.0: no nucleus filter")
    missing_eos_penalty: float = param(0.0, "taken off the (normalised) score of a reply that hit max_new_tokens without ending")
    normalize_reward: bool = param(True, "scores in units of the SFT policy's within-prompt spread, from a sample of its replies")
    reward_norm_samples: int = param(
        64, "replies of the SFT policy that set that spread, drawn before update 1 (0: the first batch)")
    # The KL penalty and its controller (Ziegler et al., 2019)
    init_kl_coef: float = param(0.1, "β at the start")
    target_kl: float | None = param(3.0, "nats per reply the adaptive controller steers to (None: β stays fixed)")
    kl_horizon: int = param(32, "replies over which β may move by a factor up to e^0.2: ~x1.1 per update here, up to ~x3 in 12")
    # PPO's update
    gamma: float = param(1.0, "discount per token (1: the score counts as much for the first token as for the last)")
    lam: float = param(0.95, "GAE's λ: bias against variance in the value head's advantages")
    clip_range: float = param(0.2, "ε: how far π/π_old may move a token before its gradient is cut")
    clip_range_value: float = param(0.2, "the same for the value head's predictions")
    vf_coef: float = param(0.1, "the value loss's weight beside the policy loss")
    whiten_advantages: bool = param(True, "advantages to zero mean and unit spread per batch (off: an ablation)")
    max_grad_norm: float = param(1.0, "gradients clipped to this norm")
    reward_batch_size: int = param(16, "replies per reward-model forward pass")
    # Checkpoints, and what the stage measures on the side
    checkpoint_every: int = param(4, "updates between checkpoints (0: none)")
    checkpoint_dir: str | None = param(None, "None: <run_dir>/checkpoints/04_ppo, outside out_dir so a failed run can resume")
    resume: bool = param(True, "continue from a checkpoint of this very configuration, if there is one")
    n_compare_prompts: int = param(4, "held-out prompts answered before and after PPO")
    n_fixed_prompts: int = param(24, "held-out prompts answered at every snapshot: progress is read there (0: none)")
    fixed_replies_per_prompt: int = param(4, "replies to each of them per snapshot")
    fixed_batch_size: int = param(32, "replies sampled at once on the fixed set")
    kl_curve_points: int = param(
        4, "the policy is kept at this many updates, 0 and the last included (stage 05's reward-vs-KL curve)")

    def __post_init__(self) -> None:
        for name in ("updates", "batch_size", "replies_per_prompt", "max_new_tokens", "max_prompt_tokens", "mini_batch_size",
                     "ppo_epochs", "kl_horizon"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"04_ppo: {name} must be >= 1, got {getattr(self, name)!r}")
        if self.baseline == "rloo" and self.replies_per_prompt < 2:
            raise ParameterError(f"04_ppo: baseline 'rloo' needs replies_per_prompt >= 2 (the others' mean is the baseline), "
                                 f"got {self.replies_per_prompt}")
        if self.baseline not in ("value", "rloo"):
            raise ParameterError(f"04_ppo: baseline must be 'value' or 'rloo', got {self.baseline!r}")
        if self.reward_norm_samples < 0:
            raise ParameterError(f"04_ppo: reward_norm_samples must be >= 0, got {self.reward_norm_samples!r}")
        if self.temperature <= 0:
            raise ParameterError(f"04_ppo: temperature must be > 0, got {self.temperature!r}")
        if self.target_kl is not None and self.target_kl <= 0:
            raise ParameterError(f"04_ppo: target_kl must be > 0 or None, got {self.target_kl!r}")

    def trajectory(self) -> dict:
        """The values that shape the run's updates, which a checkpoint must match to be resumed: all but how long it
        runs, whether and where it checkpoints, and the before-and-after comparison's prompts."""
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items()
                if k not in ("updates", "resume", "checkpoint_every", "checkpoint_dir", "n_compare_prompts")}
