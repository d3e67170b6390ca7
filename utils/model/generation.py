"""Batched, seeded reply generation with the kit's chat format.

Sampling presets are OpenAssistant's own, as recorded in their sampling reports
(``data/oa_sampling_reports/*.json``), so the kit's samples compare with the Pythia SFT models' there.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

import torch

from utils.model import chat_format
from utils.model.batching import length_batches


@dataclass(frozen=True)
class SamplingConfig:
    """Arguments of ``model.generate`` that shape a reply; ``None`` leaves the option off."""

    max_new_tokens: int = 128
    min_new_tokens: int = 5
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    num_beams: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = {k: v for k, v in asdict(self).items() if v is not None}
        if not self.do_sample:  # greedy: sampling knobs would only trigger transformers' warnings
            for k in ("temperature", "top_k", "top_p"):
                kwargs.pop(k, None)
        return kwargs


# OpenAssistant's sampling-report presets (model/model_eval/manual/config/default.json).
PRESETS: dict[str, SamplingConfig] = {
    "k50": SamplingConfig(do_sample=True, temperature=1.0, top_k=50, top_p=0.95, repetition_penalty=1.2),
    "beam5": SamplingConfig(do_sample=True, temperature=0.8, top_p=0.9, num_beams=5),
    "magic_numbers": SamplingConfig(do_sample=True, temperature=1.0, top_k=9607, top_p=0.242),
    "greedy": SamplingConfig(do_sample=False),
}


def sampling_preset(name: str, **overrides: Any) -> SamplingConfig:
    """A named preset, e.g. ``sampling_preset("k50", max_new_tokens=64)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown sampling preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _max_positions(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def generate_replies(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict[str, Any]]],
    sampling: SamplingConfig | str = "k50",
    batch_size: int = 8,
    seed: int = 0,
) -> list[str]:
    """The model's reply to each conversation in ``prompts`` (each ending with a user turn).

    Prompts are encoded with :func:`utils.model.chat_format.encode_prompt`, batched by length
    (:func:`utils.model.batching.length_batches`) and left-padded so every row of a batch ends where generation
    starts; the replies come back in the order of ``prompts``. Batch ``i`` samples with seed ``seed + i``, inside a forked RNG,
    so the same call gives the same replies and the caller's random state is untouched. A prompt longer
    than the model's context minus ``max_new_tokens`` keeps its last tokens (the latest turns), with a
    warning saying how many prompts were cut.
    """
    if isinstance(sampling, str):
        sampling = sampling_preset(sampling)
    device = _model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = chat_format.stop_token_ids(tokenizer)
    max_positions = _max_positions(model)
    budget = max_positions - sampling.max_new_tokens if max_positions else None
    if budget is not None and budget <= 0:
        raise ValueError(f"max_new_tokens={sampling.max_new_tokens} leaves no room for a prompt in a {max_positions}-token context")

    encoded = [chat_format.encode_prompt(p, tokenizer) for p in prompts]
    cut = sum(budget is not None and len(ids) > budget for ids in encoded)
    if cut:
        warnings.warn(f"{cut} of {len(encoded)} prompts were longer than {budget} tokens; kept their last {budget}", stacklevel=2)
        encoded = [ids[-budget:] for ids in encoded]

    was_training = model.training
    model.eval()
    replies: list[str | None] = [None] * len(encoded)
    try:
        for b, rows in enumerate(length_batches([len(ids) + sampling.max_new_tokens for ids in encoded], batch_size)):
            batch = [encoded[i] for i in rows]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=device)
            attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(seed + b)
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    eos_token_id=stop_ids,
                    pad_token_id=pad_id,
                    use_cache=True,
                    **sampling.generate_kwargs(),
                )
            for i, row in zip(rows, out):
                replies[i] = chat_format.decode_reply(row[width:].tolist(), tokenizer)
    finally:
        model.train(was_training)
    return replies
