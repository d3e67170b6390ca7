"""DPO's training: trl's ``DPOTrainer`` on the kit's tokenized pairs, the held-out implicit rewards before and after."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.dpo.data import EncodedPairs
from utils.dpo.evaluation import ImplicitRewards, implicit_rewards, reply_logprob_sums
from utils.dpo.params import DPOParams
from utils.dpo.policy import sft_as_reference
from utils.model.modeling import default_device, pair_schedule_args, print_progress_lines, trainer_device_args


def _trainer_class():
    """trl's DPOTrainer, taught to take pairs tokenized by the kit (built on first use: trl imports slowly)."""
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """trl's ``DPOTrainer``, fed pairs already tokenized by :func:`encode_pairs` (trl 1.16 would tokenize
        conversations through a chat template). Everything else, the loss included, is trl's."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return PretokenizedDPOTrainer


def trainer_args(params: DPOParams, n_pairs: int, output_dir: str, save_steps: int = 0):
    """trl's ``DPOConfig`` for our settings, in the compute dtype of the device (fp32 on the CPU)."""
    from trl import DPOConfig

    device = default_device()
    return DPOConfig(
        output_dir=output_dir,
        beta=params.beta,
        loss_type=[params.loss_type],
        max_length=None,  # already fitted by encode_pairs
        gradient_checkpointing=params.gradient_checkpointing,
        **pair_schedule_args(n_pairs, params.batch_size, params.grad_accum, params.epochs, params.learning_rate,
                             params.warmup, params.logging_steps, params.max_steps),
        **trainer_device_args(device, params.seed, save_steps),
    )


def make_trainer(model, tokenizer, train_set: EncodedPairs, params: DPOParams, sft_adapter_dir: str | Path, output_dir: str,
                 save_steps: int = 0):
    """trl's DPO trainer on the policy ``model`` (a peft model whose ``"default"`` adapter is the SFT adapter),
    the reference by adapter switch (see the module's note 4)."""
    trainer = _trainer_class()(
        model=model,
        ref_model=None,  # a peft model: trl copies the adapter as "ref", one base in memory
        args=trainer_args(params, len(train_set), output_dir, save_steps),
        train_dataset=train_set.dataset(),
        processing_class=tokenizer,
    )
    print_progress_lines(trainer, "DPO")  # the notebook plots the losses; the cell prints where it is
    sft_as_reference(trainer, sft_adapter_dir)
    return trainer


@dataclass
class DPOStats:
    before: ImplicitRewards
    after: ImplicitRewards
    train_seconds: float
    steps: int
    log_history: list[dict[str, Any]] = field(default_factory=list)


def train_dpo(trainer, heldout: EncodedPairs, batch_size: int = 16) -> DPOStats:
    """Held-out implicit rewards, training (resumed from the last checkpoint, if any), held-out rewards again."""
    from utils.pipeline import checkpoints

    beta, pad_id = trainer.args.beta, trainer.processing_class.pad_token_id
    model = trainer.accelerator.unwrap_model(trainer.model)
    reference = reply_logprob_sums(model, heldout, pad_id, batch_size, reference=True)
    before = implicit_rewards(model, heldout, beta, pad_id, batch_size, reference)
    saving = trainer.args.save_strategy == "steps"
    resume = checkpoints.last_complete(trainer.args.output_dir) if saving else None
    if resume:
        print(f"resuming from {resume}")
    started = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - started
    if saving and trainer.is_world_process_zero():
        checkpoints.remove(trainer.args.output_dir)
    after = implicit_rewards(model, heldout, beta, pad_id, batch_size, reference)
    return DPOStats(before, after, seconds, trainer.state.global_step, list(trainer.state.log_history))


def run_training(model, tokenizer, train_set: EncodedPairs, heldout: EncodedPairs, params: DPOParams, sft_adapter_dir: str | Path,
                 checkpoint_root: str | Path | None = None):
    """Build the trainer and train: ``(trainer, stats)``. With ``save_steps > 0`` checkpoints go to a folder of
    ``checkpoint_root`` named after the settings and the pairs (another configuration never resumes them)."""
    from utils.pipeline import checkpoints

    saving = params.save_steps > 0 and checkpoint_root is not None
    with tempfile.TemporaryDirectory(prefix="dpo-trainer-") as scratch:
        save_dir = Path(checkpoint_root) / checkpoints.run_key(params.training(), train_set.summary(), train_set.prompt_ids,
                                                               train_set.chosen_ids) if saving else Path(scratch)
        trainer = make_trainer(model, tokenizer, train_set, params, sft_adapter_dir, str(save_dir), params.save_steps if saving else 0)
        stats = train_dpo(trainer, heldout, params.eval_batch_size)
    return trainer, stats
