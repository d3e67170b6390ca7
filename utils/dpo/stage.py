"""Stage 04_dpo in steps: the notebook (``notebooks/04_dpo.ipynb``) and the script (``python -m recipes.train dpo``) call
the same steps in the same order, :func:`load_data`, :func:`load_policy_and_pairs`,
:func:`train`, :func:`~utils.dpo.policy.save_trained_policy`, and :func:`stage_metrics`, the one writer of its metrics.json.
Every step reads its settings from :class:`utils.dpo.params.DPOParams`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.dpo.params import DPOParams


@dataclass
class DPOData:
    """Step 1, :func:`load_data`: stage 03's pairs, rebuilt from the parameters stage 03 ran with."""

    reward_metrics: dict[str, Any]  # stage 03's metrics (its proxy's held-out accuracy is shown beside DPO's)
    reward_data: Any  # utils.reward.stage.RewardData: the trees and pairs of every part
    train_pairs: list  # the proxy's OASST pairs (module note 1 of utils.dpo)
    heldout_sets: dict[str, list]  # the pairs no model trained on, by held-out set

    @property
    def data_skipped(self) -> dict[str, int]:
        return self.reward_data.data_skipped  # records the readers skipped (on_error: skip), by reason

    @property
    def heldout_pairs(self) -> list:
        return [p for ps in self.heldout_sets.values() for p in ps]


def load_data(params: DPOParams, run_dir: str | Path) -> DPOData:
    """The proxy's pairs to train on and the held-out pairs to measure on, exactly as stage 03 split them (its
    record's parameters): no tree of the judge's, the eval split's or the held-out file's is trained on."""
    from utils.pipeline.artifacts import read_metrics, stage_dir
    from utils.params import ParameterError, fit_all
    from utils.reward.params import RewardParams
    from utils.reward.stage import HELDOUT_SETS, load_data as reward_data
    from utils.pipeline.stage_record import read_record
    from utils.pipeline.stages import DPO, REWARD

    metrics = read_metrics(run_dir, REWARD)
    record = read_record(stage_dir(run_dir, REWARD))
    if record is None:
        raise ParameterError(f"{DPO}: stage {REWARD} in {run_dir} has no record of the parameters it ran with; run it again")
    known = {k: v for k, v in record.parameters.items() if k in RewardParams.__dataclass_fields__}
    data = reward_data(RewardParams(**fit_all(RewardParams, known)))
    return DPOData(metrics, data, data.pairs["train: proxy"][: params.max_train_pairs],
                   {name: data.pairs[name][: params.max_eval_pairs] for name in HELDOUT_SETS})


@dataclass
class DPOModel:
    """Step 2, :func:`load_policy_and_pairs`: the policy (stage 02's base once, its adapter trainable), its tokenizer,
    where the SFT adapter is (the reference's weights), and the pairs tokenized by the chat format."""

    model: Any
    tokenizer: Any
    sft_adapter_dir: Path
    train_set: Any  # utils.dpo.data.EncodedPairs
    heldout: Any  # ... the held-out sets' pairs, concatenated in their order


def load_policy_and_pairs(params: DPOParams, run_dir: str | Path, data: DPOData, device: Any = None) -> DPOModel:
    from utils.dpo.data import encode_pairs
    from utils.dpo.policy import load_policy
    from utils.model.modeling import reset_peak_memory

    reset_peak_memory()
    model, tokenizer, sft_adapter_dir = load_policy(run_dir, params.quantization, device)
    return DPOModel(model, tokenizer, sft_adapter_dir, encode_pairs(data.train_pairs, tokenizer, params.max_length),
                    encode_pairs(data.heldout_pairs, tokenizer, params.max_length))


def train(params: DPOParams, run_dir: str | Path, policy: DPOModel):
    """Step 3: ``(trainer, stats)``, trl's DPO trainer trained, the held-out implicit rewards before and after."""
    from utils.pipeline import stages
    from utils.dpo.training import run_training

    return run_training(policy.model, policy.tokenizer, policy.train_set, policy.heldout, params, policy.sft_adapter_dir,
                        checkpoint_root=stages.checkpoint_dir(run_dir, stages.DPO))


def stage_metrics(
    out_dir: str | Path,
    params: DPOParams,
    data: DPOData,
    policy: DPOModel,
    stats: Any,
    *,
    adapter_dir: str | Path,
    parameters: tuple[int, int],
    peak_memory_mb: float | None = None,
    processes: int = 1,
    started: float | None = None,
) -> dict[str, Any]:
    """What the DPO stage records, the same whether a notebook or a script ran it."""
    from utils.pipeline.artifacts import record_path
    from utils.dpo.evaluation import per_set
    from utils.reward.evaluation import length_baseline_accuracy

    by_set = {name: {"pairs": len(pairs), "accuracy_before": b.accuracy, "accuracy_after": a.accuracy, "margin_after": a.margin}
              for name, (b, a, pairs) in per_set(stats, data.heldout_sets).items() if name != "both"}
    trainable, total = parameters
    logs = stats.log_history
    metrics = {
        "heldout_accuracy_before": stats.before.accuracy,
        "heldout_accuracy_after": stats.after.accuracy,
        "heldout_margin_before": stats.before.margin,
        "heldout_margin_after": stats.after.margin,
        "heldout_loss_before": stats.before.loss,
        "heldout_loss_after": stats.after.loss,
        "heldout_pairs": stats.after.n,
        "heldout_by_set": by_set,
        "length_baseline_accuracy": length_baseline_accuracy(data.heldout_pairs),
        "train_pairs": len(policy.train_set),
        "data_skipped": data.data_skipped,
        "train_encoding": policy.train_set.summary(),
        "heldout_encoding": policy.heldout.summary(),
        "train_seconds": stats.train_seconds,
        "steps": stats.steps,
        "train_losses": [h["loss"] for h in logs if "loss" in h],
        "train_reward_accuracies": [h["rewards/accuracies"] for h in logs if "rewards/accuracies" in h],
        "train_reward_margins": [h["rewards/margins"] for h in logs if "rewards/margins" in h],
        "beta": params.beta,
        "loss_type": params.loss_type,
        "trainable_params": trainable,
        "total_params": total,
        "adapter_dir": record_path(out_dir, adapter_dir),
        "peak_memory_mb": peak_memory_mb,
        "processes": processes,
    }
    if started is not None:
        metrics["seconds"] = time.time() - started
    return metrics
