"""Supervised fine-tuning with QLoRA: a frozen 4-bit base, small trainable LoRA matrices, loss on replies.

The recipe, and where each piece comes from:

* **Data**: OASST conversation threads ending in an assistant reply, encoded by
  :func:`utils.chat_format.encode`, which also returns which tokens are the assistant's. trl's
  ``SFTTrainer`` turns that ``assistant_masks`` column into labels (-100 elsewhere), so the loss covers the
  replies and the end-of-turn tokens that close them, never the user's words (InstructGPT's SFT, Ouyang et
  al. 2022; OpenAssistant's SFT, Köpf et al. 2023, https://arxiv.org/abs/2304.07327).
* **QLoRA** (Dettmers et al. 2023): the base's linear layers in 4-bit NF4 with double quantization, LoRA
  adapters (Hu et al. 2021) on every linear layer of the transformer blocks, gradient checkpointing on the
  GPU; memory goes to the adapters and activations, not to a full copy of the weights and Adam state.
* **New tokens**: a base without a chat template has never seen the role tokens, so their input-embedding
  rows are trained too (peft's ``trainable_token_indices``): three rows, not the whole matrix.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Sequence

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import PrinterCallback, TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

from utils import chat_format, checkpoints
from utils.artifacts import read_metrics, stage_dir
from utils.modeling import compute_dtype, load_causal_lm, load_tokenizer, trainer_device_args
from utils.notebook_params import FromParams
from utils.stages import SFT, checkpoint_dir as stage_checkpoint_dir

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


@dataclass
class SFTSettings(FromParams):
    """The knobs of a QLoRA SFT run; the notebook's parameters of the same names fill them."""

    # Settings no profile has needed to change: these defaults apply to every stage run.
    LIBRARY_ONLY = ("train_chat_token_embeddings", "warmup_steps", "lr_scheduler_type", "weight_decay")

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | list[str] = "all-linear"
    train_chat_token_embeddings: bool = True
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    per_device_eval_batch_size: int = 8
    max_length: int = 512
    packing: bool = False
    # Batching without wasted compute (measured in benchmarks/bench_sft_batching.py). group_by_length: each
    # micro-batch holds conversations of similar length, so less of it is padding. padding_free: each micro-batch
    # is one row, its conversations end to end with position ids restarting at each, and attention kept inside
    # each conversation (transformers' packed-sequence mask for sdpa/eager, varlen kernels for flash attention):
    # no padding at all, the same loss as the padded batch.
    group_by_length: bool = False
    padding_free: bool = False
    warmup_steps: float = 0.05  # an int counts steps, a float in [0, 1) is a fraction of them
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    logging_steps: int = 5
    eval_steps: int = 0  # > 0: also measure held-out loss every eval_steps (for the curve)
    gradient_checkpointing: bool | None = None  # None: on where there is a GPU
    seed: int = 0
    save_steps: int = 0  # > 0: a checkpoint every save_steps steps (with a checkpoint_dir), resumed after a kill

    def __post_init__(self) -> None:
        # trl's packing without padding_free is its "wrapped" strategy: conversations run into each other (one
        # attends to the last) and are cut at row ends, so the assistant-only loss no longer means what it says.
        if self.packing and not self.padding_free:
            raise ValueError("packing: true needs padding_free: true (packing alone lets conversations attend to each other "
                             "and cuts them at row ends)")


@dataclass
class EncodedSet:
    """Tokenized conversations and what happened to them on the way (nothing is dropped unsaid)."""

    dataset: Dataset
    conversations: int
    truncated: int
    dropped_no_reply_left: int
    tokens: int
    assistant_tokens: int

    def summary(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "dataset"}


def encode_conversations(conversations: Sequence[Sequence[dict]], tokenizer, max_length: int) -> EncodedSet:
    """``input_ids`` + ``assistant_masks`` for each conversation, cut to its first ``max_length`` tokens.

    A conversation whose cut leaves no assistant token (a very long prompt) teaches nothing and is dropped;
    both counts are returned.
    """
    rows: dict[str, list] = {"input_ids": [], "assistant_masks": []}
    truncated = dropped = 0
    # Conversations longer than the model's context are expected here: they are cut below, and counted.
    # Mark the tokenizer's warn-once "sequence longer than the maximum" warning as already given.
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    for conv in conversations:
        enc = chat_format.encode(conv, tokenizer)
        if len(enc) > max_length:
            truncated += 1
            enc = chat_format.Encoded(enc.input_ids[:max_length], enc.assistant_mask[:max_length])
        if not any(enc.assistant_mask):
            dropped += 1
            continue
        rows["input_ids"].append(enc.input_ids)
        rows["assistant_masks"].append(enc.assistant_mask)
    return EncodedSet(
        dataset=Dataset.from_dict(rows),
        conversations=len(conversations),
        truncated=truncated,
        dropped_no_reply_left=dropped,
        tokens=sum(map(len, rows["input_ids"])),
        assistant_tokens=sum(map(sum, rows["assistant_masks"])),
    )


def chat_token_ids(tokenizer) -> list[int]:
    """Ids of the OpenAssistant role tokens, the ones a template-less base has never been trained on."""
    if chat_format.uses_chat_template(tokenizer):
        return []
    return sorted(tokenizer.convert_tokens_to_ids(t) for t in chat_format.OA_SPECIAL_TOKENS)


def use_gradient_checkpointing(settings: SFTSettings, device: torch.device) -> bool:
    # Checkpointing trades compute for activation memory: worth it on a memory-bound GPU, a pure loss on a CPU.
    if settings.gradient_checkpointing is None:
        return device.type == "cuda"
    return settings.gradient_checkpointing


def add_lora(model, tokenizer, settings: SFTSettings) -> PeftModel:
    """Freeze the base and wrap it with LoRA adapters (and trainable chat-token embedding rows)."""
    device = next(model.parameters()).device
    if getattr(model, "is_loaded_in_4bit", False):
        # Freezes the base and keeps norms and embeddings in float32, QLoRA's numerically safe setup.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=use_gradient_checkpointing(settings, device))
    new_tokens = chat_token_ids(tokenizer) if settings.train_chat_token_embeddings else []
    config = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target_modules,
        trainable_token_indices=new_tokens or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    set_seed(settings.seed)  # LoRA's A matrices start random: the same seed, the same adapter
    return get_peft_model(model, config)


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where stage 02 keeps its checkpoints: outside its own folder, so a killed run finds them."""
    return stage_checkpoint_dir(run_dir, SFT)


def trainer_config(settings: SFTSettings, out_dir: str | Path, device: torch.device, save_dir: str | Path | None = None) -> SFTConfig:
    """trl's config for ``settings``; checkpoints go to ``save_dir`` every ``settings.save_steps`` steps (if both are set)."""
    saving = settings.save_steps > 0 and save_dir is not None
    return SFTConfig(
        output_dir=str(save_dir if saving else out_dir),  # without checkpoints nothing is written there
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        per_device_eval_batch_size=settings.per_device_eval_batch_size,
        # encode_conversations already cut every conversation to max_length; trl enforces it only by packing,
        # and refuses a max_length with padding_free and no packing.
        max_length=None if settings.padding_free and not settings.packing else settings.max_length,
        packing=settings.packing,
        # Packing fills max_length rows with conversations. Padding-free, best-fit decreasing ("bfd") keeps each
        # conversation whole and apart (position ids restart, attention stays inside it). Otherwise "wrapped"
        # concatenates and cuts: a conversation can then attend to the end of the one before it. The loss covers
        # only assistant tokens either way.
        packing_strategy="bfd" if settings.padding_free else "wrapped",
        padding_free=settings.padding_free,
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type=settings.lr_scheduler_type,
        weight_decay=settings.weight_decay,
        logging_steps=settings.logging_steps,
        eval_strategy="steps" if settings.eval_steps > 0 else "no",
        eval_steps=settings.eval_steps if settings.eval_steps > 0 else None,
        activation_checkpointing=use_gradient_checkpointing(settings, device),  # transformers 5 name of gradient checkpointing
        # Padding-free batches hold no padding, and the pad token may be a real token there (SmolLM2 pads with its
        # end of turn <|im_end|>), so every token counts; padded batches count their attention mask.
        include_num_input_tokens_seen="all" if settings.padding_free else "non_padding",
        prediction_loss_only=True,  # evaluation needs the loss, not every eval batch's logits kept in memory
        data_seed=settings.seed,
        **trainer_device_args(device, settings.seed, settings.save_steps if saving else 0),
    )


def make_trainer(
    model: PeftModel,
    tokenizer,
    train: Dataset,
    eval: Dataset,
    settings: SFTSettings,
    out_dir: str | Path,
    checkpoint_dir: str | Path | None = None,
) -> SFTTrainer:
    """trl's SFTTrainer on pre-tokenized data: it builds labels from ``assistant_masks`` itself.

    With ``settings.save_steps > 0`` and a ``checkpoint_dir``, checkpoints go to a subfolder of it named
    after everything that decides the training (settings, data, base model), so a changed configuration
    never resumes another's checkpoint; :func:`train` resumes from the last one.
    """
    device = next(model.parameters()).device
    save_dir = None
    if settings.save_steps > 0 and checkpoint_dir is not None:
        decided_by = {**asdict(settings), "save_steps": None, "base": str(model.get_base_model().config.name_or_path)}
        save_dir = Path(checkpoint_dir) / checkpoints.run_key(decided_by, train, eval)
    trainer = SFTTrainer(
        model=model,
        args=trainer_config(settings, out_dir, device, save_dir),
        train_dataset=train,
        eval_dataset=eval,
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)  # the notebook plots the losses instead of printing each log line
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


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: str | Path | None = None, title: str = "SFT loss (assistant tokens)"):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, style in (("train", "-"), ("eval", "o--")):
        if curves.get(name):
            steps, losses = zip(*curves[name])
            ax.plot(steps, losses, style, label=f"{name} (held-out)" if name == "eval" else name)
    ax.set(xlabel="optimizer step", ylabel="cross-entropy (nats/token)", title=title)
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


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


def train(trainer: SFTTrainer) -> TrainStats:
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


def save_adapter(model: PeftModel, tokenizer, path: str | Path) -> Path:
    """The LoRA adapter (safetensors) with the tokenizer it was trained with."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def merge_adapter(base_model: str | Path, adapter_dir: str | Path, path: str | Path, trust_remote_code: bool = False) -> Path:
    """A standalone model: the base in full precision with the adapter folded into its weights.

    Merged into 4-bit weights, the update would be rounded away to the 4-bit grid; so the base is reloaded
    unquantized on the CPU, which needs the base's full-precision size in RAM (5.6 GB for Pythia-1.4B).
    """
    tokenizer = load_tokenizer(adapter_dir)
    base = load_causal_lm(base_model, quantization="none", device="cpu", trust_remote_code=trust_remote_code, tokenizer=tokenizer)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return Path(path)


def load_sft_base(
    run_dir: str | Path,
    quantization: str | None = None,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
):
    """``(base model, tokenizer, adapter dir)`` of a finished 02_sft stage, for the stages after it.

    The one place that reads where stage 02's base came from: a path it recorded (the tiny base's cache, or a
    base saved in the stage folder) or a hub name. ``quantization=None`` loads the base as SFT trained on it
    (the adapter was fitted to those weights). The tokenizer is the one saved beside the adapter.
    """
    metrics = read_metrics(run_dir, SFT)
    adapter = stage_dir(run_dir, SFT) / metrics["adapter_dir"]
    base = metrics["base_model_dir"]
    if (stage_dir(run_dir, SFT) / base).exists():  # a path (relative to the stage folder, or absolute)
        base = stage_dir(run_dir, SFT) / base
    tokenizer = load_tokenizer(adapter, trust_remote_code=trust_remote_code)
    quantization = quantization or metrics.get("quantization", "nf4")
    model = load_causal_lm(base, quantization, device, trust_remote_code=trust_remote_code, tokenizer=tokenizer)
    return model, tokenizer, adapter


def load_sft_model(
    run_dir: str | Path,
    quantization: str | None = None,
    device: torch.device | str | None = None,
    trainable: bool = False,
    trust_remote_code: bool = False,
):
    """``(model, tokenizer)`` of a finished 02_sft stage: its base with its adapter.

    ``trainable=True`` leaves the adapter's weights trainable.
    """
    model, tokenizer, adapter = load_sft_base(run_dir, quantization, device, trust_remote_code)
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable), tokenizer


def generations_table(prompts: Sequence[Sequence[dict]], columns: dict[str, Sequence[str]], width: int = 300):
    """A DataFrame: the last user turn of each prompt, then one column per model, texts cut to ``width``."""
    import pandas as pd

    def cut(s: str) -> str:
        return s if len(s) <= width else s[: width - 1] + "…"

    rows = {"prompt": [cut(chat_format.normalize(p)[-1]["content"]) for p in prompts]}
    rows.update({name: [cut(t) for t in texts] for name, texts in columns.items()})
    return pd.DataFrame(rows)


def save_generations(path: str | Path, prompts: Sequence[Sequence[dict]], columns: dict[str, Sequence[str]]) -> Path:
    """The full (uncut) generations as JSON lines: one prompt and every column's text a line."""
    with open(path, "w") as f:
        for i, prompt in enumerate(prompts):
            f.write(json.dumps({"prompt": list(prompt), **{k: v[i] for k, v in columns.items()}}) + "\n")
    return Path(path)


def heldout_prompts(conversations: Sequence[Sequence[dict]], n: int) -> tuple[list[list[dict]], list[str]]:
    """The first ``n`` distinct prompts of ``conversations`` and the human reply each had (the reference)."""
    prompts, references, seen = [], [], set()
    for conv in conversations if n > 0 else ():
        prompt, reply = chat_format.split_prompt_reply(conv)
        key = json.dumps(prompt)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
            references.append(reply)
        if len(prompts) == n:
            break
    return prompts, references


def show_mask(conversation: Sequence[dict], tokenizer, max_chars: int = 600) -> str:
    """The encoded conversation as text, the tokens the loss covers between ⟦ and ⟧."""
    enc = chat_format.encode(conversation, tokenizer)
    pieces = []
    for trained, run in groupby(zip(enc.input_ids, enc.assistant_mask), key=lambda pair: pair[1]):
        text = tokenizer.decode([token_id for token_id, _ in run])  # whole runs: multi-byte characters stay whole
        pieces.append(f"⟦{text}⟧" if trained else text)
    text = "".join(pieces)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def stage_metrics(
    stats: TrainStats,
    out_dir: str | Path,
    *,
    adapter_dir: str | Path,
    base_model: str | Path,
    quantization: str,
    parameters: tuple[int, int],
    train_set: EncodedSet,
    eval_set: EncodedSet,
    selection: Any,
    data_skipped: dict[str, int],
    peak_memory_mb: float | None = None,
    base_report: dict | None = None,
    merged_dir: str | Path | None = None,
    device: Any = None,
    processes: int = 1,
    started: float | None = None,
) -> dict[str, Any]:
    """What stage 02 records, the same whether a notebook or a script ran it.

    ``base_model_dir`` is a path relative to the stage folder when the base lives inside it, absolute for a
    cached build (the tiny base, a converted GGUF), and the name as given for a hub name or ``gguf:`` source.
    """
    from utils.artifacts import record_path

    trainable, total = parameters
    return {
        "eval_loss_before": stats.eval_loss_before,
        "eval_loss_after": stats.eval_loss_after,
        "train_loss_first": stats.train_loss_first,
        "train_loss_last": stats.train_loss_last,
        "train_losses": [loss for _, loss in stats.curves["train"]],
        "quantization": quantization,
        "trainable_params": trainable,
        "total_params": total,
        "tokens_per_second": stats.tokens_per_second,
        "train_seconds": stats.train_seconds,
        "train_tokens": stats.tokens_seen,
        "peak_memory_mb": peak_memory_mb,
        "adapter_dir": record_path(out_dir, adapter_dir),
        "base_model_dir": record_path(out_dir, base_model) if Path(base_model).exists() else str(base_model),
        "merged_dir": record_path(out_dir, merged_dir) if merged_dir else None,
        "base_heldout_perplexity": base_report["heldout_perplexity"] if base_report else None,
        "unigram_heldout_perplexity": base_report["unigram_perplexity"] if base_report else None,
        "train_conversations": len(train_set.dataset),
        "eval_conversations": len(eval_set.dataset),
        "sft_selection": selection.counts,
        "data_skipped": dict(data_skipped),
        "device": str(device) if device is not None else None,
        "processes": processes,
        **({"seconds": time.time() - started} if started is not None else {}),
    }
