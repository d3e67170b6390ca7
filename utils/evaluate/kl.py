"""KL from a reference, by Monte Carlo: replies sampled from the model itself, scored on the very token ids sampled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from utils.model import chat_format
from utils.model.batching import length_batches
from utils.evaluate.models import Models, use
from utils.evaluate.tournament import bootstrap_mean_ci

Conversation = list[dict[str, Any]]

@dataclass
class Sample:
    prompt_ids: list[int]
    reply_ids: list[int]  # the stop token included when the reply ended with one


KL_SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0}  # the model's own distribution, untruncated


@torch.no_grad()
def sample_replies(model, tokenizer, prompts: Sequence[Conversation], max_new_tokens: int, batch_size: int = 8, seed: int = 0) -> list[Sample]:
    """Replies drawn from the model's own distribution (temperature 1, nothing truncated), as token ids.

    Every prompt must leave room for ``max_new_tokens`` in the model's context (see :func:`fitting_prompts`):
    a cut prompt would no longer be the prompt the estimate is about.
    """
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    stops = chat_format.stop_token_ids(tokenizer)
    encoded = [chat_format.encode_prompt(p, tokenizer) for p in prompts]
    context = getattr(model.config, "max_position_embeddings", None)
    too_long = [i for i, x in enumerate(encoded) if context and len(x) + max_new_tokens > context]
    if too_long:
        i = too_long[0]
        raise ValueError(f"prompt {i} has {len(encoded[i])} tokens: with max_new_tokens={max_new_tokens} it overflows the "
                         f"model's {context}-token context ({len(too_long)} such prompts); select prompts with fitting_prompts")
    out: list[Sample | None] = [None] * len(encoded)
    for b, rows in enumerate(length_batches([len(x) + max_new_tokens for x in encoded], batch_size)):
        width = max(len(encoded[i]) for i in rows)
        ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in rows], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in rows], device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed + b)
            gen = model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, **KL_SAMPLING, min_new_tokens=0, max_new_tokens=max_new_tokens,
                eos_token_id=stops, pad_token_id=pad_id,
            )
        for i, row in zip(rows, gen[:, width:].tolist()):
            cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
            out[i] = Sample(encoded[i], row[:cut])
    return out


@torch.no_grad()
def masked_logprob_sums(model, sequences: Sequence[list[int]], masks: Sequence[list[int]], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """For each sequence, ``Σ log p(token_t | tokens_<t)`` over the positions t where its mask is 1.

    Sequences are batched by length (:func:`utils.model.batching.length_batches`; the sums come back in the input
    order), padded on the right with the attention mask off, and scored with a fused cross-entropy rather than a
    full log-softmax.
    """
    device = next(model.parameters()).device
    sums = np.zeros(len(sequences))
    for rows in length_batches([len(s) for s in sequences], batch_size):
        width = max(len(sequences[i]) for i in rows)
        ids = torch.tensor([sequences[i] + [pad_id] * (width - len(sequences[i])) for i in rows], device=device)
        attn = torch.tensor([[1] * len(sequences[i]) + [0] * (width - len(sequences[i])) for i in rows], device=device)
        mask = torch.tensor([list(masks[i]) + [0] * (width - len(masks[i])) for i in rows], device=device, dtype=torch.bool)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()  # position t predicts token t + 1
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        sums[rows] = (-nll * mask[:, 1:]).sum(1).cpu().numpy()
    return sums


def reply_logprobs(model, samples: Sequence[Sample], pad_id: int, batch_size: int = 8) -> np.ndarray:
    """``Σ_t log p(y_t | x, y_<t)`` over each sample's reply tokens, under ``model``."""
    sequences = [s.prompt_ids + s.reply_ids for s in samples]
    masks = [[0] * len(s.prompt_ids) + [1] * len(s.reply_ids) for s in samples]
    return masked_logprob_sums(model, sequences, masks, pad_id, batch_size)


def policy_samples(models: Models, policy: str, prompts: Sequence[Conversation], max_new_tokens: int,
                   batch_size: int = 8, seed: int = 0) -> tuple[list[Sample], np.ndarray]:
    """Replies sampled from ``policy``'s own distribution and their log-probs under it."""
    with use(models, policy) as m:
        samples = sample_replies(m, models.tokenizer, prompts, max_new_tokens, batch_size, seed)
        return samples, reply_logprobs(m, samples, models.tokenizer.pad_token_id, batch_size)


def kl_to(models: Models, reference: str, samples: Sequence[Sample], own_logprobs: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Per-sample estimates of KL(policy ‖ reference): the policy's log-probs of its own samples minus the reference's."""
    with use(models, reference) as m:
        return own_logprobs - reply_logprobs(m, samples, models.tokenizer.pad_token_id, batch_size)


def monte_carlo_kl(
    models: Models,
    policy: str,
    references: Sequence[str],
    prompts: Sequence[Conversation],
    max_new_tokens: int,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-sample estimates of KL(policy ‖ reference) for each reference, from one set of policy samples."""
    samples, own = policy_samples(models, policy, prompts, max_new_tokens, batch_size, seed)
    return {ref: kl_to(models, ref, samples, own, batch_size) for ref in references}


KL_REFERENCES = {"sft": ("base",), "ppo": ("base", "sft"), "dpo": ("base", "sft"), "rloo": ("base", "sft")}  # each trained model against where it started


def kl_estimates(models: Models, prompts: Sequence[Conversation], max_new_tokens: int, batch_size: int = 8, rounds: int = 1000,
                 seed: int = 0) -> dict[str, dict[str, tuple[float, float, float]]]:
    """``{model: {reference: (mean, lo, hi)}}``: KL per reply of each trained model of the run from the models it
    started from (:data:`KL_REFERENCES`), a Monte-Carlo mean over its own samples with a bootstrap interval."""
    kl = {}
    for policy, references in KL_REFERENCES.items():
        if policy in models.names:
            per_sample = monte_carlo_kl(models, policy, references, prompts, max_new_tokens, batch_size=batch_size, seed=seed)
            kl[policy] = {ref: bootstrap_mean_ci(v, rounds=rounds, seed=seed) for ref, v in per_sample.items()}
    return kl


def kl_rows(kl: Mapping[str, Mapping[str, Sequence[float]]]) -> list[dict[str, str]]:
    """:func:`kl_estimates` as table rows."""
    return [{"model": m, **{f"KL from {r}": f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for r, v in refs.items()}} for m, refs in kl.items()]
