"""Stage 04_ppo in steps: the notebook (``notebooks/04_ppo.ipynb``) and the script (``python -m recipes.train ppo``)
call the same steps in the same order, :func:`load_data`, :func:`load_models`, :func:`make_trainer`, then
``trainer.train(params.updates)``, :func:`save`, and :func:`stage_metrics`, the one writer of its metrics.json.
Every step reads its settings from :class:`utils.ppo.params.PPOParams`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from utils.ppo.params import PPOParams

if TYPE_CHECKING:
    from utils.ppo.trainer import PPOTrainer
    from utils.rloo.params import RLOOParams


@dataclass
class PromptData:
    """Step 1, :func:`load_data`: the split, the training prompts (the **rl** view of the training trees) and a few
    prompts of the eval split answered before and after training (stage 04_rloo's too)."""

    split: Any
    train_prompts: list
    compare_prompts: list

    @property
    def data_skipped(self) -> dict[str, int]:
        return self.split.report.as_dict()["skipped"]  # records the readers skipped (on_error: skip), by reason


def load_data(params: PPOParams | RLOOParams) -> PromptData:
    from utils.oasst import rl_prompts

    split = params.load_split()
    return PromptData(split, rl_prompts(split.train), rl_prompts(split.eval)[: params.n_compare_prompts])


@dataclass
class PPOModels:
    """Step 2, :func:`load_models`: the policy (stage 02's base, its adapter as the trainable policy and again as the
    frozen reference, a value head), its tokenizer, and the reward (stage 03's proxy or ``reward_function``)."""

    model: Any
    tokenizer: Any
    reward_fn: Callable
    reward_source: dict[str, str]


def load_models(params: PPOParams, run_dir: str | Path, data: PromptData, device: Any = None) -> PPOModels:
    from utils.model.modeling import reset_peak_memory
    from utils.ppo.model import load_sft_policy
    from utils.rl.reward_functions import stage_reward

    reset_peak_memory()
    model, tokenizer = load_sft_policy(run_dir, params.quantization, gradient_checkpointing=params.gradient_checkpointing)
    reward_fn, reward_source = stage_reward(run_dir, params.reward_function, data.train_prompts,
                                            batch_size=params.reward_batch_size, device=device)
    return PPOModels(model, tokenizer, reward_fn, reward_source)


def make_trainer(params: PPOParams, run_dir: str | Path, data: PromptData, models: PPOModels,
                 log: Callable[[str], None] | None = print) -> PPOTrainer:
    """Step 3: the fixed set progress is read on, and the trainer, resumed from this run's last checkpoint if
    ``resume`` and there is one. Then ``trainer.train(params.updates)``."""
    from utils.pipeline import stages
    from utils.rl.fixed_set import stage_progress
    from utils.ppo.trainer import PPOTrainer

    checkpoints = Path(params.checkpoint_dir or stages.checkpoint_dir(run_dir, stages.PPO))
    progress = stage_progress(run_dir, data.split.heldout, models.tokenizer, models.reward_fn, n_prompts=params.n_fixed_prompts,
                              replies_per_prompt=params.fixed_replies_per_prompt, max_new_tokens=params.max_new_tokens,
                              max_prompt_tokens=params.max_prompt_tokens, batch_size=params.fixed_batch_size,
                              reward_batch_size=params.reward_batch_size, seed=params.seed, player_prefix="ppo", log=log)
    trainer = PPOTrainer(models.model, models.tokenizer, data.train_prompts, models.reward_fn, params, checkpoint_dir=checkpoints,
                         checkpoint_every=params.checkpoint_every, log=log,
                         snapshot_updates=snapshot_schedule(params.updates, params.kl_curve_points),
                         snapshot_dir=checkpoints / "snapshots", progress=progress)
    if params.resume:
        trainer.resume()
    return trainer


def save(trainer: PPOTrainer, models: PPOModels, out_dir: str | Path) -> tuple[Path, dict[int, Path]]:
    """Step 4: ``(adapter_dir, snapshots)``: the policy adapter, a plain peft folder (the value head is training
    machinery, kept only in the checkpoints), and the snapshots for stage 05's reward-against-KL curve."""
    adapter_dir = models.model.save_policy_adapter(Path(out_dir) / "adapter")
    models.tokenizer.save_pretrained(adapter_dir)
    from utils.pipeline.checkpoints import export_snapshots

    snapshots = export_snapshots(trainer.snapshot_dir, Path(out_dir) / "snapshots", trainer.snapshot_updates)
    return adapter_dir, snapshots


def snapshot_schedule(updates: int, points: int) -> list[int]:
    """``points`` updates spread evenly over a run of ``updates``, the start (0) and the end included."""
    if points < 2:
        raise ValueError(f"a reward-against-KL curve needs at least 2 points (the start and the end), got {points}")
    return sorted({round(i * updates / (points - 1)) for i in range(points)})


def stage_metrics(
    trainer: PPOTrainer,
    out_dir: str | Path,
    data: PromptData,
    models: PPOModels,
    *,
    adapter_dir: str | Path,
    snapshots: Mapping[int, Path],
    processes: int = 1,
    policy_checksums: Sequence[float] | None = None,
) -> dict[str, Any]:
    """What stage 04 records, the same whether a notebook or a script ran it."""
    from utils.pipeline.artifacts import record_path
    from utils.model.modeling import peak_memory_mb

    return {
        **summary_metrics(trainer.history),
        "reward_means": [row["reward_mean"] for row in trainer.history],  # training log: each update's new prompts
        "kl_per_update": [row["kl"] for row in trainer.history],
        "kl_coef_per_update": [row["kl_coef"] for row in trainer.history],
        "target_kl": trainer.config.target_kl,
        "reward_norm": list(trainer.reward_norm) if trainer.reward_norm else None,
        "prompts": len(trainer.prompts),
        "prompts_too_long": trainer.prompts_too_long,
        "data_skipped": data.data_skipped,
        "adapter_dir": record_path(out_dir, adapter_dir),
        "snapshots": {update: record_path(out_dir, path) for update, path in snapshots.items()},
        **models.reward_source,  # reward_model_dir (stage 03's proxy) or reward_function ("module:function")
        "peak_memory_mb": peak_memory_mb(),
        "processes": processes,
        "policy_checksums": list(policy_checksums) if policy_checksums is not None else None,
        # Progress on the fixed held-out prompts (utils.rl.fixed_set): gains paired by prompt against update 0 (SFT).
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


def format_row(row: dict[str, float]) -> str:
    """One update's training log as one line; the value head's figures only where there is one (not with RLOO's baseline)."""
    value = row["value_loss"] == row["value_loss"]  # NaN without a value head
    critic = f"value loss {row['value_loss']:.3f}  expl var {row['explained_variance']:+.2f}  " if value else ""
    return (
        f"update {row['update']:>4}  batch reward {row['reward_mean']:+.3f} ± {row['reward_std']:.3f}  kl {row['kl']:.3f} "
        f"(β {row['kl_coef']:.3f})  entropy {row['entropy']:.2f}  clip {row['clip_fraction']:.2f}  {critic}"
        f"length {row['response_length']:.1f}  ended {row['ended_fraction']:.2f}  {row['seconds']:.1f}s"
    )
