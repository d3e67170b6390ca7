"""Loading tokenizers and causal language models the same way in every stage.

One call gives a model ready for the kit: the chat special tokens (``utils.model.chat_format``) are in the
tokenizer and the model's embeddings cover them, the pad token is known to the model, and with
``quantization="nf4"`` the linear layers are 4-bit NormalFloat with double quantization, QLoRA's recipe
(Dettmers et al., 2023, https://arxiv.org/abs/2305.14314). bitsandbytes runs 4-bit layers on the CPU too,
slowly, so the offline profile trains the very same QLoRA model a GPU would.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel, TrainerCallback

from utils.model import chat_format
from utils.model.source import resolve_model_source

Quantization = Literal["nf4", "none"]
QUANTIZATIONS = ("nf4", "none")


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU.

    Under ``accelerate launch`` or ``torchrun`` each process drives the GPU of its local rank.
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def sharded_training() -> bool:
    """True under an accelerate launch with FSDP or DeepSpeed (which set these variables in each process)."""
    return any(os.environ.get(v, "").lower() in ("1", "true") for v in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


def compute_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The dtype matrix multiplications run in on ``device``.

    bf16 on GPUs with native support (Ampere and newer); fp16 on older GPUs such as the T4, where bf16 is
    only emulated; float32 on the CPU, where half precision matmuls are slow or missing.
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type != "cuda":
        return torch.float32
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def trainer_device_args(device: torch.device, seed: int, save_steps: int = 0) -> dict:
    """The transformers ``TrainingArguments`` that SFT, reward and DPO training share: precision and placement
    for ``device`` (:func:`compute_dtype`), checkpoints every ``save_steps`` (> 0; the last one kept, all a
    resume needs), the seed, and no reporting or progress bars (the notebooks plot the curves)."""
    dtype = compute_dtype(device)
    saving = save_steps > 0
    return dict(
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        dataloader_pin_memory=device.type == "cuda",
        use_cpu=device.type == "cpu",  # without it, processes launched on a CPU machine would each train alone
        save_strategy="steps" if saving else "no",
        save_steps=save_steps if saving else None,
        save_total_limit=1 if saving else None,
        report_to="none",
        seed=seed,
        disable_tqdm=True,
    )


class StepLines(TrainerCallback):
    """One printed line every tenth of the training (and at the end), with the time so far and an estimate of what
    is left, so a long training cell is never silent (the notebooks turn the bars off). Its last line is also what
    the runner shows beside a running stage. Use :func:`print_progress_lines`."""

    def __init__(self, label: str, parts: int = 10, out=print):
        self.label, self.parts, self.out = label, parts, out
        self.started, self.first, self.next_step = 0.0, 0, 1

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()
        self.first = state.global_step  # a resumed run goes on from its checkpoint's step
        self.next_step = self.first + 1

    def on_step_end(self, args, state, control, **kwargs):
        step, total = state.global_step, max(state.max_steps, 1)
        if step < self.next_step and step < total:
            return
        self.next_step = step + max(1, total // self.parts)
        elapsed = time.time() - self.started
        left = elapsed / max(step - self.first, 1) * (total - step)
        loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
        self.out(f"{self.label}: step {step}/{total}, {elapsed:.0f} s so far, about {left:.0f} s left"
                 + (f", training loss {loss:.3g}" if loss is not None else ""), flush=True)


class Countdown:
    """A printed line each time a part of a long loop finishes (a player answered, a set scored): what finished, how
    many of how many, the time so far and what is left at the rate so far, so a minutes-long cell that is not a
    Trainer's is never silent either. Parts may have sizes (``tick(parts=n)``: n prompts, n samples), for an estimate
    that holds when they differ."""

    def __init__(self, total: int, unit: str, out=None):
        self.total, self.unit = max(int(total), 1), unit
        self.out = out if out not in (None, print) else (lambda line: print(line, flush=True))  # seen as it happens
        self.done, self.started = 0, time.time()

    def tick(self, what: str, parts: int = 1) -> None:
        self.done += parts
        elapsed = time.time() - self.started
        left = elapsed / max(self.done, 1) * max(self.total - self.done, 0)
        self.out(f"{what} ({self.done} of {self.total} {self.unit}, {elapsed:.0f} s so far, about {left:.0f} s left)")


def print_progress_lines(trainer, label: str) -> None:
    """Replace the trainer's printed log dicts (``PrinterCallback``) by :class:`StepLines`: the curves are plotted
    from the log history, and the cell prints where it is."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepLines(label))


def pair_schedule_args(n_pairs: int, batch_size: int, grad_accum: int, epochs: float, learning_rate: float,
                       warmup: float, logging_steps: int | None, max_steps: int = -1) -> dict:
    """The optimisation schedule the two pairwise trainers (reward model, DPO) share: batches of pairs, a linear
    decay after ``warmup`` (a fraction of the steps), and about 20 points on the training curve unless
    ``logging_steps`` says otherwise."""
    steps = max_steps if max_steps > 0 else math.ceil(math.ceil(n_pairs / batch_size) / grad_accum * epochs)
    return dict(
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        warmup_steps=warmup,
        lr_scheduler_type="linear",
        logging_steps=logging_steps or max(1, steps // 20),
    )


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    """A tokenizer with the chat special tokens (and a pad token) added where it has no chat template.

    ``name_or_path`` is any model source of :mod:`utils.model.source` (hub name, folder, GGUF file).
    """
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(name_or_path), trust_remote_code=trust_remote_code)
    chat_format.add_special_tokens(tokenizer)
    return tokenizer


def nf4_config(device: torch.device | str | None = None) -> BitsAndBytesConfig:
    """QLoRA's quantization: 4-bit NormalFloat weights, quantized quantization constants (double quant)."""
    dtype = compute_dtype(device)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # FSDP and ZeRO-3 shard every weight as a tensor of one dtype: the packed 4-bit weights must then be stored
        # in the compute dtype rather than uint8 (the QLoRA + FSDP recipe). One GPU keeps the compact uint8.
        bnb_4bit_quant_storage=dtype if sharded_training() else torch.uint8,
    )


def load_causal_lm(
    name_or_path: str | Path,
    quantization: Quantization = "nf4",
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    tokenizer=None,
) -> PreTrainedModel:
    """A causal LM on ``device``, 4-bit NF4 (``"nf4"``) or in its compute dtype (``"none"``).

    ``name_or_path`` is any model source of :mod:`utils.model.source`: a hub name, a folder, or a GGUF file
    (converted once to a folder in the cache, then loaded like any other).

    Pass the kit's ``tokenizer`` (from :func:`load_tokenizer`) so that the embeddings are grown to cover
    the chat tokens it added, when the checkpoint's vocabulary does not already (Pythia's embedding matrix
    is padded to 50,304 rows, so its 3 new tokens fit without growing it), and so that the model knows
    the pad token.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    device = torch.device(device) if device is not None else default_device()
    dtype = compute_dtype(device)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(device)
        # bitsandbytes quantizes the weights as they are placed on the device: place them there directly.
        if device.type == "cuda":
            kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
        else:
            kwargs["device_map"] = {"": device.type}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_source(name_or_path), **kwargs)
    except OSError as e:
        raise OSError(f"cannot load a causal LM from {str(name_or_path)!r}: {e}") from None
    if quantization == "none":
        model.to(device)
    else:
        keep_one_cpu_4bit_path(model)
    if tokenizer is not None:
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            # New rows start at the mean of the old ones (transformers' default), a neutral starting point.
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def keep_one_cpu_4bit_path(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' CPU inference repacking of 4-bit weights; returns how many layers it concerned.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit``'s weights for a faster inference kernel
    the first time the layer runs in eval mode without gradients, and never packs them back. Training after that
    (SFT's held-out loss is measured before training; PPO samples before every update) then runs the inference
    kernel, which carries no gradient to the layer's input and fails on layers with a bias; PPO's log-probs would
    also come from two different kernels. One path for every forward pass keeps training and sampling exact.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; a 4-bit weight counts as its real number of parameters.

    bitsandbytes stores two 4-bit values per uint8 element, so those tensors count double.
    """
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.dtype == torch.uint8 and hasattr(p, "quant_state") else 1)
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def _proc_status_mb(field: str) -> float | None:
    """One memory line of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MiB; None off Linux."""
    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_memory() -> bool:
    """Start a new peak-memory window (see :func:`peak_memory_mb`).

    Returns whether the window really restarted. It may not on the CPU: some kernels and sandboxes refuse or
    ignore the reset, and the peak then counts from process start (still an upper bound).
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return True
    # Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM).
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    peak, resident = _proc_status_mb("VmHWM"), _proc_status_mb("VmRSS")
    return peak is not None and resident is not None and peak - resident < 16  # MiB of slack for the reads


def peak_memory_mb() -> float:
    """Peak memory since :func:`reset_peak_memory`, in MiB.

    On a GPU: the most memory torch's allocator held for tensors. On the CPU: the process's peak resident
    memory (Python, libraries and data included, so an upper bound on what the model needed).
    """
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere
