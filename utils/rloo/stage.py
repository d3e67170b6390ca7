"""Stage 04_rloo in steps: the notebook (``notebooks/04_rloo.ipynb``) and the script (``python -m recipes.train rloo``)
call the same steps in the same order, :func:`load_data` (PPO's: the same prompts), :func:`load_models`,
:func:`train`, :func:`utils.dpo.policy.save_trained_policy`, and :func:`stage_metrics`, the one writer of its metrics.json. Every step reads its
settings from :class:`utils.rloo.params.RLOOParams`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from utils.ppo.stage import PromptData, load_data  # noqa: F401 (step 1: the rl prompts of the split, as PPO's)
from utils.rloo.params import RLOOParams


@dataclass
class RLOOModels:
    """Step 2, :func:`load_models`: the policy (stage 02's base once, its adapter trainable; trl adds the frozen
    reference), its tokenizer, the SFT adapter's folder, the training prompts that fit, and the reward."""

    model: Any
    tokenizer: Any
    sft_adapter_dir: Path
    prompts: Any  # utils.rloo.training.PromptSet
    reward_fn: Callable
    reward_source: dict[str, str]


def load_models(params: RLOOParams, run_dir: str | Path, data: PromptData, device: Any = None) -> RLOOModels:
    from utils.dpo.policy import load_policy
    from utils.model.modeling import reset_peak_memory
    from utils.rl.reward_functions import stage_reward
    from utils.rloo.training import encode_prompts

    reset_peak_memory()
    model, tokenizer, sft_adapter_dir = load_policy(run_dir, params.quantization, device)
    prompts = encode_prompts(data.train_prompts, tokenizer, params.max_prompt_tokens)
    reward_fn, reward_source = stage_reward(run_dir, params.reward_function, prompts.conversations, params.reward_batch_size,
                                            device=device)
    return RLOOModels(model, tokenizer, sft_adapter_dir, prompts, reward_fn, reward_source)


def train(params: RLOOParams, run_dir: str | Path, out_dir: str | Path, data: PromptData, models: RLOOModels,
          log: Callable[[str], None] | None = print):
    """Step 3: ``(trainer, stats, progress)``: the fixed set progress is read on, measured at update 0 and at each
    snapshot, and trl's RLOO trainer trained (resumed from this run's last checkpoint, if any)."""
    from utils.pipeline import stages
    from utils.rl.fixed_set import stage_progress
    from utils.ppo.stage import snapshot_schedule
    from utils.rloo.training import run_training

    progress = stage_progress(run_dir, data.split.heldout, models.tokenizer, models.reward_fn, n_prompts=params.n_fixed_prompts,
                              replies_per_prompt=params.fixed_replies_per_prompt, max_new_tokens=params.max_new_tokens,
                              max_prompt_tokens=params.max_prompt_tokens, batch_size=params.fixed_batch_size,
                              reward_batch_size=params.reward_batch_size, seed=params.seed, player_prefix="rloo", log=log)
    trainer, stats = run_training(models.model, models.tokenizer, models.prompts, models.reward_fn, params,
                                  models.sft_adapter_dir, out_dir, snapshot_updates=snapshot_schedule(params.updates, params.kl_curve_points),
                                  checkpoint_root=stages.checkpoint_dir(run_dir, stages.RLOO), log=log, progress=progress)
    return trainer, stats, progress


def stage_metrics(
    out_dir: str | Path,
    params: RLOOParams,
    data: PromptData,
    models: RLOOModels,
    stats: Any,
    *,
    adapter_dir: str | Path,
    progress: Any = None,
    peak_memory_mb: float | None = None,
    processes: int = 1,
    started: float | None = None,
) -> dict[str, Any]:
    """What the RLOO stage records, the same whether a notebook or a script ran it."""
    from utils.pipeline.artifacts import record_path

    log = stats.train_log
    if not log:
        raise ValueError("no RLOO update was logged")
    metrics = {
        "algorithm": params.algorithm,  # "rloo" or "grpo": which trl trainer (utils.rloo, note 8)
        "updates": stats.updates,
        "reward_mean_first": log[0]["reward_mean"],
        "reward_mean_last": log[-1]["reward_mean"],
        "kl_last": log[-1]["kl"],  # nats per reply, as PPO's
        "reward_means": [row["reward_mean"] for row in log],
        "kl_per_update": [row["kl"] for row in log],
        "train_log": list(log),  # per update: trl's logs under the kit's names (utils.rloo.training.update_row)
        "train_seconds": stats.train_seconds,
        "seconds_per_update": stats.train_seconds / max(stats.updates, 1),
        "beta": params.beta,
        "replies_per_prompt": params.replies_per_prompt,
        "prompts_per_update": params.prompts_per_update,
        "learning_rate": params.learning_rate,
        **models.reward_source,  # reward_model_dir (stage 03's proxy) or reward_function ("module:function")
        "prompts": len(models.prompts),
        "prompts_too_long": models.prompts.too_long,
        "data_skipped": data.data_skipped,
        "adapter_dir": record_path(out_dir, adapter_dir),
        "snapshots": {update: record_path(out_dir, path) for update, path in stats.snapshots.items()},
        "peak_memory_mb": peak_memory_mb,
        "processes": processes,
        # Progress on the fixed held-out prompts (utils.rl.fixed_set): gains paired by prompt against update 0 (SFT).
        "progress": progress.points if progress is not None else [],
        "fixed_set": progress.save(out_dir).name if progress is not None and progress.samples else None,
        "ended_fraction_first": log[0]["ended_fraction"],
        "ended_fraction_last": log[-1]["ended_fraction"],
    }
    if started is not None:
        metrics["seconds"] = time.time() - started
    return metrics
