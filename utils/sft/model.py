"""The SFT adapter on disk: saved with its tokenizer, merged into a full-precision base, and loaded by the stages after."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel

from utils.pipeline.artifacts import read_metrics, stage_dir
from utils.model.modeling import load_causal_lm, load_tokenizer
from utils.pipeline.stages import SFT

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


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
