"""QLoRA training: LoRA on a (4-bit) base, trl's SFTTrainer on pre-tokenized threads, checkpoints resumed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from utils.pipeline import checkpoints
from utils.model.modeling import compute_dtype, print_progress_lines, trainer_device_args
from utils.sft.data import chat_token_ids
from utils.sft.params import SFTParams


def use_gradient_checkpointing(params: SFTParams, device: torch.device) -> bool:
    # Checkpointing trades compute for activation memory: worth it on a memory-bound GPU, a pure loss on a CPU.
    if params.gradient_checkpointing is None:
        return device.type == "cuda"
    return params.gradient_checkpointing


def add_lora(model, tokenizer, params: SFTParams) -> PeftModel:
    """Freeze the base and wrap it with LoRA adapters (and trainable chat-token embedding rows)."""
    device = next(model.parameters()).device
    if getattr(model, "is_loaded_in_4bit", False):
        # Freezes the base and keeps norms and embeddings in float32, QLoRA's numerically safe setup.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=use_gradient_checkpointing(params, device))
    new_tokens = chat_token_ids(tokenizer) if params.train_chat_token_embeddings else []
    config = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.lora_target_modules,
        trainable_token_indices=new_tokens or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    set_seed(params.seed)  # LoRA's A matrices start random: the same seed, the same adapter
    return get_peft_model(model, config)


def trainer_config(params: SFTParams, out_dir: str | Path, device: torch.device, save_dir: str | Path | None = None) -> SFTConfig:
    """trl's config for ``params``; checkpoints go to ``save_dir`` every ``params.save_steps`` steps (if both are set)."""
    saving = params.save_steps > 0 and save_dir is not None
    return SFTConfig(
        output_dir=str(save_dir if saving else out_dir),  # without checkpoints nothing is written there
        learning_rate=params.learning_rate,
        num_train_epochs=params.num_train_epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.per_device_train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        per_device_eval_batch_size=params.per_device_eval_batch_size,
        # encode_conversations already cut every conversation to max_length; trl enforces it only by packing,
        # and refuses a max_length with padding_free and no packing.
        max_length=None if params.padding_free and not params.packing else params.max_length,
        packing=params.packing,
        # Packing fills max_length rows with conversations. Padding-free, best-fit decreasing ("bfd") keeps each
        # conversation whole and apart (position ids restart, attention stays inside it). Otherwise "wrapped"
        # concatenates and cuts: a conversation can then attend to the end of the one before it. The loss covers
        # only assistant tokens either way.
        packing_strategy="bfd" if params.padding_free else "wrapped",
        padding_free=params.padding_free,
        train_sampling_strategy="group_by_length" if params.group_by_length else "random",
        warmup_steps=params.warmup_steps,
        lr_scheduler_type=params.lr_scheduler_type,
        weight_decay=params.weight_decay,
        logging_steps=params.logging_steps,
        eval_strategy="steps" if params.eval_steps > 0 else "no",
        eval_steps=params.eval_steps if params.eval_steps > 0 else None,
        activation_checkpointing=use_gradient_checkpointing(params, device),  # transformers 5 name of gradient checkpointing
        # Padding-free batches hold no padding, and the pad token may be a real token there (SmolLM2 pads with its
        # end of turn <|im_end|>), so every token counts; padded batches count their attention mask.
        include_num_input_tokens_seen="all" if params.padding_free else "non_padding",
        prediction_loss_only=True,  # evaluation needs the loss, not every eval batch's logits kept in memory
        data_seed=params.seed,
        **trainer_device_args(device, params.seed, params.save_steps if saving else 0),
    )


def make_trainer(
    model: PeftModel,
    tokenizer,
    train: Dataset,
    eval: Dataset,
    params: SFTParams,
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
) -> SFTTrainer:
    """trl's SFTTrainer on pre-tokenized data: it builds labels from ``assistant_masks`` itself.

    With ``params.save_steps > 0`` and a ``checkpoint_dir``, checkpoints go to a subfolder of it named
    after everything that decides the training (the parameters, the data, the base model), so a changed configuration
    never resumes another's checkpoint; :func:`train` resumes from the last one.
    """
    device = next(model.parameters()).device
    save_dir = None
    if params.save_steps > 0 and checkpoint_dir is not None:
        decided_by = {**params.training(), "base": str(model.get_base_model().config.name_or_path)}
        save_dir = Path(checkpoint_dir) / checkpoints.run_key(decided_by, train, eval)
    trainer = SFTTrainer(
        model=model,
        args=trainer_config(params, out_dir, device, save_dir),
        train_dataset=train,
        eval_dataset=eval,
        processing_class=tokenizer,
    )
    print_progress_lines(trainer, "SFT")  # the notebook plots the losses; the cell prints where it is
    if compute_dtype(device) != torch.bfloat16:
        # trl stores a 4-bit model's adapters in bf16 (QLoRA's choice on bf16 GPUs). Without bf16 compute
        # (CPU, T4) that is slow, and fp16 mixed precision needs float32 trainable weights; peft's default.
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return trainer


def loss_curves(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """``{"train": [(step, loss)], "eval": [(step, eval_loss)]}`` from a trainer's log history.

    An evaluation repeated at the same step (the one after training, when the last step was an eval step
    already) appears once.
    """
    train = [(row["step"], row["loss"]) for row in log_history if "loss" in row]
    evals = {row["step"]: row["eval_loss"] for row in log_history if "eval_loss" in row}
    return {"train": train, "eval": sorted(evals.items())}


class _Clock(TrainerCallback):
    """Wall-clock time of the training loop alone (evaluations excluded), for an honest tokens/s."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t: float | None = None

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self._t is not None:
            self.seconds += time.perf_counter() - self._t
            self._t = None


@dataclass
class TrainStats:
    eval_loss_before: float
    eval_loss_after: float
    train_loss_first: float
    train_loss_last: float
    tokens_seen: int
    train_seconds: float
    tokens_per_second: float
    curves: dict = field(default_factory=dict)


def train_sft(trainer: SFTTrainer) -> TrainStats:
    """Held-out loss, training, held-out loss again.

    tokens/s counts the non-pad input tokens trained on over the time spent in optimizer steps
    (evaluations excluded).

    With checkpoints (``save_steps``), a run killed before the end resumes from its last checkpoint:
    the same weights, optimizer, schedule, data order and random state, so the same result as a run
    never stopped. The checkpoints go once training finished.
    """
    before = trainer.evaluate()["eval_loss"]
    clock = _Clock()
    trainer.add_callback(clock)
    saving = trainer.args.save_strategy == "steps"
    resume = checkpoints.last_complete(trainer.args.output_dir) if saving else None
    tokens_before = checkpoints.tokens_seen(resume) if resume else 0
    if resume:
        print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.remove_callback(clock)
    if saving and trainer.is_world_process_zero():
        checkpoints.remove(trainer.args.output_dir)
    # A periodic evaluation at the last step already measured the trained model on the same threads
    last = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e and e.get("step") == trainer.state.global_step]
    after = last[-1] if last else trainer.evaluate()["eval_loss"]
    curves = loss_curves(trainer.state.log_history)
    curves["eval"].insert(0, (0, before))  # train() starts a fresh log: the first evaluation is not in it
    if not curves["train"]:
        raise RuntimeError("training logged no loss: set logging_steps no larger than the number of steps")
    tokens = int(trainer.state.num_input_tokens_seen)
    tokens_now = tokens - tokens_before  # the speed of this session: a resumed run trained only the rest
    return TrainStats(
        eval_loss_before=before,
        eval_loss_after=after,
        train_loss_first=curves["train"][0][1],
        train_loss_last=curves["train"][-1][1],
        tokens_seen=tokens,
        train_seconds=clock.seconds,
        tokens_per_second=tokens_now / clock.seconds if clock.seconds else float("nan"),
        curves=curves,
    )
